"""Mastering: loudness against ffmpeg's ebur128, true peak, trim, fades, limiter behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import butter, sosfiltfilt

from soundtrack.audio import decode_with_ffmpeg, write_wav
from soundtrack.encode import encode
from soundtrack.errors import AudioError, InputError
from soundtrack.gates import GateResult, judge
from soundtrack.limiter import (
    ATTACK_MS,
    RELEASE_MS,
    limit_true_peak,
    limiter_gain_db,
    true_peak_dbtp,
)
from soundtrack.loudness import oversampled_peaks
from soundtrack.manifest import load_manifest
from soundtrack.master import (
    _MIN_DURATION_S,
    DC_HIGHPASS_HZ,
    ENCODING_HEADROOM_DB,
    MAX_MAKEUP_DB,
    Master,
    _without_dc,
    master,
)
from soundtrack.measure import measure
from soundtrack.resolve import resolve_tracks
from soundtrack.schema import MIN_DURATION_S
from soundtrack.spec import LOUDNESS_PROFILES, LoudnessTarget, Mastering, TrackSpec
from tests import signals
from tests.music import held_chord
from tests.reference import ebur128

TAGS = {"title": "Title Theme", "soundtrack": "sky-odyssey", "track_id": "title", "spec_hash": "ab"}


def _lead_silence_s(audio: np.ndarray, sample_rate: int) -> float:
    loud = np.flatnonzero(np.abs(audio).max(axis=0) >= 10 ** (-60 / 20))
    return float(loud[0] / sample_rate)


def _trail_silence_s(audio: np.ndarray, sample_rate: int) -> float:
    loud = np.flatnonzero(np.abs(audio).max(axis=0) >= 10 ** (-60 / 20))
    return float((audio.shape[1] - 1 - loud[-1]) / sample_rate)


def test_meters_read_ebu_tech_3341_sine(tmp_path: Path) -> None:
    # EBU Tech 3341 case 1: a stereo 1 kHz sine at -23 dBFS reads -23.0 LUFS +-0.1.
    sine = signals.sine(1000.0, -23.0, 20.0, 48000)
    path = tmp_path / "sine.wav"
    write_wav(path, sine, 48000)
    assert pyloudnorm.Meter(48000).integrated_loudness(sine.T) == pytest.approx(-23.0, abs=0.1)
    integrated, true_peak = ebur128(path)
    assert integrated == pytest.approx(-23.0, abs=0.1)
    assert true_peak == pytest.approx(-23.0, abs=0.1)


@pytest.mark.parametrize("profile", ["console", "mobile", "web"])
def test_encoded_files_meet_the_profile(profile: str, tmp_path: Path) -> None:
    # MusicGen-like input: 32 kHz mono, with a DC offset and silence around the music.
    music = signals.music_like(20.0, 32000, channels=1, peak_dbfs=-3.0)
    raw = np.concatenate(
        [np.zeros((1, 16000), np.float32), music + 0.05, np.zeros((1, 32000), np.float32)], axis=1
    )
    loudness = LOUDNESS_PROFILES[profile]
    m = master(raw, 32000, Mastering(loudness=loudness), loop=False, duration_s=18.0)
    assert m.audio.shape[0] == 2
    assert m.sample_rate == 44100
    files = encode(m, ["ogg", "mp3"], tmp_path, "track", tags=TAGS)
    for f in files:
        integrated, true_peak = ebur128(f.path)
        assert integrated == pytest.approx(loudness.integrated_lufs, abs=0.5), f.format
        assert true_peak <= loudness.true_peak_max_dbtp, f.format
        if f.format == "ogg":
            data, rate = sf.read(f.path, always_2d=True)
            decoded = data.T
        else:
            decoded, rate = decode_with_ffmpeg(f.path)
        assert rate == 44100
        assert decoded.shape[1] / rate == pytest.approx(18.0, abs=0.5)
        assert _lead_silence_s(decoded, rate) <= 0.05
        assert _trail_silence_s(decoded, rate) <= 0.5
        assert np.abs(decoded.mean(axis=1)).max() <= 0.001


def test_a_master_without_fades_stays_under_its_ceiling_as_played_from_silence() -> None:
    """With fades off, a one-shot starts and ends mid-waveform: a player starting it from
    silence overshoots there, which a reading that mirrors the ends does not see."""
    rate = 44100
    t = np.arange(4 * rate) / rate
    wave = 0.5 * np.cos(2 * np.pi * 8000 * t) * np.cos(2 * np.pi * 300 * t)
    target = LoudnessTarget(integrated_lufs=-4.0)  # loud enough to need the limiter
    mastering = Mastering(loudness=target, fade_in_ms=0.0, fade_out_s=0.0)
    m = master(np.stack([wave, wave]), rate, mastering, loop=False, duration_s=4)
    assert m.limiter_reduction_db > 0.0
    ceiling = target.true_peak_max_dbtp - ENCODING_HEADROOM_DB
    played = 20 * np.log10(oversampled_peaks(m.audio, ends="silent").max())
    assert played <= ceiling
    assert 20 * np.log10(oversampled_peaks(m.audio).max()) <= ceiling


def test_a_loop_after_an_intro_is_limited_across_the_seam_it_plays() -> None:
    """A bar loop starts at its first downbeat: its end flows into that frame, not into the
    file's first. Limited as if it wrapped to frame 0, it measured over its ceiling."""
    rate = 44100
    t = np.arange(rate) / rate
    square = 0.95 * np.sign(np.sin(2 * np.pi * 11000 * t + 0.3))
    intro = np.zeros(rate // 2)
    audio = np.stack([np.concatenate([intro, square])] * 2).astype(np.float32)
    limited, reduction_db = limit_true_peak(audio, rate, -2.5, loop_start=intro.size)
    assert reduction_db > 0.0
    looped = measure(limited, rate, loop_start=intro.size, loop_length=rate)
    assert looped.true_peak_dbtp <= -2.5


def test_limiter_lowers_the_peaks_and_leaves_the_body(tmp_path: Path) -> None:
    # Music with a loud click every second, pushed to -16 LUFS: only the clicks need limiting.
    rate = 44100
    music = signals.music_like(10.0, rate, peak_dbfs=-20.0)
    source = music + 0.2 * signals.transients(10.0, rate, hits_per_s=1.0)
    target = LoudnessTarget(integrated_lufs=-16.0)
    m = master(source, rate, Mastering(loudness=target, fade_out_s=0.0), loop=False, duration_s=10)
    assert m.limiter_reduction_db > 3.0
    assert true_peak_dbtp(m.audio) <= target.true_peak_max_dbtp
    assert pyloudnorm.Meter(rate).integrated_loudness(m.audio.T) == pytest.approx(-16.0, abs=0.1)
    # Lossy encoding raises limited peaks: the decoded files must still be under the ceiling.
    for f in encode(m, ["ogg", "mp3"], tmp_path, "clicks", tags=TAGS):
        integrated, true_peak = ebur128(f.path)
        assert integrated == pytest.approx(-16.0, abs=0.5), f.format
        assert true_peak <= target.true_peak_max_dbtp, f.format
    # Between clicks (0.6-0.95 s after each) the master is the input times the normalisation
    # gain: the limiter's gain is local. A waveshaper such as tanh would bend these samples too.
    trimmed = source.shape[1] - m.audio.shape[1]
    expected = source[:, trimmed:] * 10 ** (m.gain_db / 20)
    for second in range(9):
        span = slice(
            round((second + 0.6) * rate) - trimmed, round((second + 0.95) * rate) - trimmed
        )
        body = np.abs(expected[:, span]) > 0.05
        ratio = m.audio[:, span][body] / expected[:, span][body]
        assert np.abs(ratio - 1.0).max() < 0.02, second
    # The crest factor falls by no more than the limiter's largest reduction.
    crest_in = 20 * np.log10(np.abs(source).max() / np.sqrt(np.mean(source**2)))
    crest_out = 20 * np.log10(np.abs(m.audio).max() / np.sqrt(np.mean(m.audio**2)))
    assert crest_out >= crest_in - m.limiter_reduction_db - 0.5


def test_hard_limited_noise_bursts_stay_under_the_ceiling_after_lossy_encoding(
    tmp_path: Path,
) -> None:
    # Full-band bursts limited by ~18 dB are the worst case seen for codec overshoot (LAME V2
    # added 1.2 dB): the master's headroom below the ceiling must absorb it.
    loudness = LOUDNESS_PROFILES["web"]
    m = master(
        signals.transients(20.0, 44100),
        44100,
        Mastering(loudness=loudness),
        loop=False,
        duration_s=20.0,
    )
    assert m.limiter_reduction_db > 12.0
    for f in encode(m, ["ogg", "mp3"], tmp_path, "bursts", tags=TAGS):
        _, true_peak = ebur128(f.path)
        assert true_peak <= loudness.true_peak_max_dbtp, f.format


@pytest.mark.parametrize("circular", [False, True])
def test_the_limiters_release_decays_each_reduction_sample_by_sample(circular: bool) -> None:
    """The release, a running maximum taken in blocks to bound a long track's memory, is the
    recursion r[n] = max(needed[n], a * r[n-1]); a loop's end releases into its start."""
    rate, ceiling_dbtp = 48000, -1.0
    frames = 3 * 65536 + 123
    peaks = np.full(frames, 0.1, np.float32)
    # Overs just before block boundaries, one whose release crosses two of them, and one at the
    # very end that a loop carries into its first frames.
    for at, level in ((65530, 2.0), (131000, 4.0), (140000, 1.5), (frames - 1, 3.0)):
        peaks[at] = level
    gain_db = limiter_gain_db(peaks, rate, ceiling_dbtp, circular=circular)

    needed = np.minimum(0.0, ceiling_dbtp - 0.02 - 20 * np.log10(peaks.astype(np.float64)))
    a = np.exp(-1.0 / (RELEASE_MS / 1000.0 * rate))
    reduction, released = 0.0, np.empty(frames)
    for _ in range(2 if circular else 1):  # a loop's second pass starts from its end's
        for n in range(frames):
            reduction = max(-needed[n], a * reduction)
            released[n] = -reduction
    half = round(ATTACK_MS / 2000.0 * rate)
    mode = "wrap" if circular else "nearest"
    held = minimum_filter1d(released, size=2 * half + 1, mode=mode)
    expected = np.minimum(uniform_filter1d(held, size=2 * half + 1, mode=mode), needed)
    assert np.abs(gain_db - expected).max() < 1e-4
    assert (gain_db[:100] < -1.0).all() == circular  # the end's reduction, carried round


def test_limiter_catches_intersample_peaks(tmp_path: Path) -> None:
    # A sine at fs/4 sampled 45 degrees off its crests: sample peak 0.707, true peak 1.0 (0 dBTP).
    # Faded in and out: the meters' interpolators differ on an abrupt edge, not on this.
    rate = 44100
    n = np.arange(rate * 2)
    fade = np.minimum(1.0, np.minimum(n, n[::-1]) / 4410)
    x = (fade * np.sin(np.pi / 2 * n + np.pi / 4))[None, :].repeat(2, axis=0)
    assert np.abs(x).max() == pytest.approx(0.7071, abs=1e-3)
    limited, reduction_db = limit_true_peak(x, rate, -3.0)
    assert reduction_db == pytest.approx(3.0, abs=0.2)
    path = tmp_path / "limited.wav"
    write_wav(path, limited.astype(np.float32), rate)
    _, true_peak = ebur128(path)
    assert true_peak <= -3.0 + 0.05  # ebur128 prints one decimal


@pytest.mark.parametrize("rate", [24000, 32000, 48000])
@pytest.mark.parametrize("duration_s", [2.345, 4.99, 12.345])
def test_a_render_of_the_duration_masters_to_exactly_the_duration(
    rate: int, duration_s: float
) -> None:
    """soxr rounds a fractional length down: 2.345 s rendered at 48 kHz or 24 kHz came out of
    mastering one sample short of round(2.345 * 44100)."""
    render = signals.pink_noise(-20.0, round(duration_s * rate) / rate, rate)
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"], fade_out_s=0.5)
    m = master(render, rate, mastering, loop=False, duration_s=duration_s)
    assert m.audio.shape[1] == round(duration_s * 44100)


@pytest.mark.parametrize(("target_lufs", "true_peak_dbtp"), [(-10.0, -2.0), (-8.0, -1.0)])
def test_a_loud_target_is_met_within_tolerance_without_runaway_gain(
    target_lufs: float, true_peak_dbtp: float
) -> None:
    """Chasing -8 LUFS under -1 dBTP, the gain ran to +110 dB (a brick wall), and a master
    0.07 LU from -10 LUFS failed for missing the 0.05 LU step, though its tolerance was 2."""
    audio = held_chord(120.0, 16.0, 44100)
    loudness = LoudnessTarget(target_lufs, true_peak_dbtp, tolerance_lu=2.0)
    m = master(audio, 44100, Mastering(loudness=loudness), loop=False, duration_s=16.0)
    # input_lufs is the whole input's; the gain is the faded cut's (a few tenths apart).
    assert m.gain_db <= target_lufs - m.input_lufs + MAX_MAKEUP_DB + 1.0
    measured = measure(m.audio, 44100)
    assert abs(measured.integrated_lufs - target_lufs) <= 2.0
    assert measured.true_peak_dbtp <= true_peak_dbtp


def test_a_target_out_of_reach_says_how_close_it_came() -> None:
    loudness = LoudnessTarget(-6.0, -1.0, tolerance_lu=1.0)
    with pytest.raises(AudioError, match=r"cannot reach -6.0 LUFS .*: -\d+\.\d+ LUFS at best"):
        master(
            held_chord(120.0, 16.0, 44100),
            44100,
            Mastering(loudness=loudness),
            loop=False,
            duration_s=16.0,
        )


def test_short_fades_and_no_fade_for_loops() -> None:
    rate = 44100
    noise = signals.pink_noise(-20.0, 6.0, rate)
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"], fade_in_ms=10.0, fade_out_s=1.0)
    m = master(noise, rate, mastering, loop=False, duration_s=6.0)
    envelope = np.abs(m.audio).max(axis=0)
    assert envelope[0] == 0.0  # the fade starts at silence
    assert envelope[: round(0.005 * rate)].max() < envelope[round(0.1 * rate) :].max() / 3
    assert envelope[-1] < 1e-4
    last_second = m.audio[:, -rate:]
    assert np.sqrt(np.mean(last_second[:, -rate // 4 :] ** 2)) < np.sqrt(
        np.mean(last_second[:, : rate // 4] ** 2)
    )


@pytest.mark.parametrize("fade_out_s", [0.5, 2.0])
def test_the_fade_out_falls_linearly_over_its_whole_length(fade_out_s: float) -> None:
    rate = 44100
    tone = signals.sine(441.0, -20.0, 8.0, rate)  # whole periods of 100 samples
    mastering = Mastering(
        loudness=LOUDNESS_PROFILES["console"], fade_in_ms=0.0, fade_out_s=fade_out_s
    )
    m = master(tone, rate, mastering, loop=False, duration_s=8.0)
    body = float(np.abs(m.audio[:, rate : 2 * rate]).max())
    for gain in (0.75, 0.5, 0.25):
        # The peak of the period that ends where the ramp is at `gain`.
        end = m.audio.shape[1] - round(gain * fade_out_s * rate)
        assert float(np.abs(m.audio[:, end - 100 : end]).max()) / body == pytest.approx(
            gain, abs=0.01
        )


def test_a_quiet_intro_above_the_trim_threshold_is_kept() -> None:
    """Only what lies under -60 dBFS in the master is trimmed: an intro 35 dB under the body
    (about -55 dBFS once mastered) stays, and the music starts on time."""
    rate = 44100
    intro = signals.sine(441.0, -40.0, 1.0, rate)
    body = signals.sine(441.0, -5.0, 5.0, rate)
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"], fade_in_ms=0.0)
    m = master(np.concatenate([intro, body], axis=1), rate, mastering, loop=False, duration_s=6.0)
    first_s = float(np.abs(m.audio[:, : rate // 2]).max())
    assert -60.0 < 20 * np.log10(first_s) < -50.0, "the intro is there, at its level"
    assert 20 * np.log10(float(np.abs(m.audio[:, 2 * rate : 3 * rate]).max())) > -30.0


def test_silent_or_broken_input_is_refused() -> None:
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"])
    with pytest.raises(AudioError, match="silent"):
        master(np.zeros((1, 44100 * 3), np.float32), 44100, mastering, loop=False, duration_s=3)
    broken = signals.pink_noise(-20.0, 3.0, 44100)
    broken[0, 100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        master(broken, 44100, mastering, loop=False, duration_s=3)
    with pytest.raises(AudioError, match="channels"):
        master(np.zeros((3, 44100), np.float32), 44100, mastering, loop=False, duration_s=1)
    # Stereo whose channels are out of phase, mastered to mono: the cause, not "silent".
    mono = Mastering(loudness=LOUDNESS_PROFILES["console"], channels=1)
    tone = signals.sine(440.0, -12.0, 3.0, 44100)
    inverted = np.concatenate([tone[:1], -tone[:1]])
    with pytest.raises(AudioError, match="its 2 channels cancel out when mixed down to 1"):
        master(inverted, 44100, mono, loop=False, duration_s=3)
    with pytest.raises(AudioError, match="audio is silent"):  # a DC offset alone is no music
        master(np.full((2, 3 * 44100), 0.5, np.float32), 44100, mono, loop=False, duration_s=3)


def _spec(tmp_path: Path, track: str) -> TrackSpec:
    """The one track of a manifest, validated and resolved as a build would."""
    path = tmp_path / "m.yaml"
    path.write_text(
        f"schema: 1\nsoundtrack: game\ntracks:\n  - id: cue\n    prompt: sting\n{track}"
    )
    (spec,) = resolve_tracks(load_manifest(path), tmp_path)
    return spec


def _master_gates(spec: TrackSpec, m: Master) -> list[GateResult]:
    metrics = measure(m.audio, m.sample_rate, loop_start=m.loop_start, loop_length=m.loop_length)
    return judge(
        metrics,
        limits=spec.gates,
        loudness=spec.mastering.loudness,
        duration_s=spec.duration_s,
        loop=spec.loop,
        sample_rate=spec.mastering.sample_rate,
        channels=spec.mastering.channels,
    )


def test_a_short_cue_with_default_settings_masters_and_passes_its_gates(tmp_path: Path) -> None:
    # Issue 12: a 2 s cue validated, rendered, then failed on the fixed 2 s fade-out.
    spec = _spec(tmp_path, "    duration: 1.5\n")
    assert spec.mastering.fade_out_s == pytest.approx(0.375)  # a quarter of the duration
    render = signals.music_like(1.5, 32000, channels=1, peak_dbfs=-3.0)
    m = master(render, 32000, spec.mastering, loop=False, duration_s=spec.duration_s)
    assert m.audio.shape[1] == pytest.approx(1.5 * 44100, abs=2)
    failed = [r for r in _master_gates(spec, m) if not r.passed and r.severity == "fail"]
    assert failed == []


def test_settings_at_the_edge_validate_allows_master_without_error(tmp_path: Path) -> None:
    # validate mirrors master's and loops' own checks: what it lets through must render.
    fades = _spec(tmp_path, "    duration: 2\n    fade_in_ms: 500\n    fade_out_s: 1.5\n")
    # A little past the duration: trimming the render's first (near-silent) samples must not
    # leave it shorter than the fades, which validate cannot foresee.
    render = signals.music_like(2.1, 44100, peak_dbfs=-3.0)
    master(render, 44100, fades.mastering, loop=False, duration_s=fades.duration_s)
    # A loop is at least two 0.4 s loudness blocks (its seam's), and its crossfade fits twice
    # before the earliest end searched: loops.SEARCH_S before the duration, or 0.8 s.
    for shortest, under, crossfade in (("0.8", "0.79", ""), ("1.3", "1.29", "450")):
        setting = f"    loop_crossfade_ms: {crossfade}\n" if crossfade else ""
        loop = _spec(tmp_path, f"    duration: {shortest}\n    loop: true\n{setting}")
        render = signals.music_like(loop.render_duration_s, 44100, peak_dbfs=-3.0)
        m = master(render, 44100, loop.mastering, loop=True, duration_s=loop.duration_s)
        assert m.loop_length == m.audio.shape[1] >= 0.8 * 44100
        assert all(g.passed for g in _master_gates(loop, m) if g.name == "seam")
        with pytest.raises(InputError) as refused:
            _spec(tmp_path, f"    duration: {under}\n    loop: true\n{setting}")
        said = refused.value.problems[0]
        field = "loop_crossfade_ms (line 8)" if crossfade else "duration (line 6)"
        assert f"tracks[0].{field}: a {under} s loop is too short" in said, said
    with pytest.raises(InputError) as refused:
        _spec(tmp_path, "    duration: 2\n    fade_in_ms: 501\n    fade_out_s: 1.5\n")
    assert "tracks[0].fade_out_s (line 8): a 501 ms fade-in plus" in refused.value.problems[0]


def test_the_manifest_minimum_duration_is_the_masters() -> None:
    # schema.MIN_DURATION_S copies master._MIN_DURATION_S (importing master is slow), and the
    # analysis takes the shortest track there is.
    from soundtrack import analysis

    assert MIN_DURATION_S == _MIN_DURATION_S == analysis.MIN_DURATION_S


def test_audio_trimmed_under_a_gating_block_is_refused_saying_so() -> None:
    """0.45 s whose first 60 ms are silence trims to 0.39 s, under the one 0.4 s block that
    loudness needs: mastering gave up at "-inf LUFS at best", as if the audio were silent."""
    tone = signals.sine(440.0, -20.0, 0.45, 48000)
    tone[:, : round(0.06 * 48000)] = 0.0
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"], fade_out_s=0.05)
    with pytest.raises(AudioError, match="s of audio once its silence is trimmed; loudness needs"):
        master(tone, 48000, mastering, loop=False, duration_s=0.45)


@pytest.mark.parametrize("circular", [False, True])
def test_dc_removal_is_scipys_forward_backward_filter_run_a_piece_at_a_time(
    circular: bool,
) -> None:
    """The high-pass runs a piece of the channel at a time (a 10-minute track's float64 copies
    took 1.8 GB): what comes out is scipy's sosfiltfilt of the whole, odd-extended or, for a
    loop, with its wrap beside either end."""
    rate = 48000
    frames = 3 * 2**18 + 12345  # pieces, and a part-piece, either way
    channel = (signals.music_like(frames / rate, rate, channels=1, seed=5)[0] + 0.05).astype(
        np.float32
    )
    centred = channel.astype(np.float64) - channel.mean(dtype=np.float64)
    sos = butter(2, DC_HIGHPASS_HZ, btype="highpass", fs=rate, output="sos")
    if circular:
        pad = 3 * rate // 10
        expected = sosfiltfilt(sos, np.pad(centred, pad, mode="wrap"), padtype=None)[pad:-pad]
    else:
        expected = sosfiltfilt(sos, centred)
    got = _without_dc(channel, rate, circular=circular)
    assert got.dtype == np.float32 and got.shape == channel.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
