"""Synthetic test signals of known level and structure, float32 shaped (channels, frames)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf

# A I-vi-IV-V progression in C (MIDI notes), one chord per bar.
_CHORDS = ((60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62))


def _db_to_amp(level_db: float) -> float:
    return float(10.0 ** (level_db / 20.0))


def sine(
    freq_hz: float,
    level_dbfs: float,
    duration_s: float,
    sample_rate: int,
    *,
    channels: int = 2,
) -> np.ndarray:
    """A sine whose peak is `level_dbfs` in every channel (EBU Tech 3341's convention)."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    wave = _db_to_amp(level_dbfs) * np.sin(2.0 * np.pi * freq_hz * t)
    return np.tile(wave, (channels, 1)).astype(np.float32)


def pink_noise(
    rms_dbfs: float,
    duration_s: float,
    sample_rate: int,
    *,
    channels: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Independent 1/f noise per channel, scaled so each channel's RMS is `rms_dbfs`."""
    rng = np.random.default_rng(seed)
    frames = round(duration_s * sample_rate)
    spectrum = rng.standard_normal((channels, frames // 2 + 1)) + 1j * rng.standard_normal(
        (channels, frames // 2 + 1)
    )
    freqs = np.fft.rfftfreq(frames, 1.0 / sample_rate)
    spectrum *= 1.0 / np.sqrt(np.maximum(freqs, 20.0))  # 1/f power; nothing below 20 Hz
    spectrum[:, 0] = 0.0
    noise = np.fft.irfft(spectrum, n=frames)
    noise *= _db_to_amp(rms_dbfs) / np.sqrt(np.mean(noise**2, axis=1, keepdims=True))
    return noise.astype(np.float32)


def music_like(
    duration_s: float,
    sample_rate: int,
    *,
    channels: int = 2,
    bpm: float = 120.0,
    peak_dbfs: float = -6.0,
    seed: int = 0,
) -> np.ndarray:
    """Plucked arpeggios over a soft pad, one chord per bar: clear chroma and onsets, repeating
    every 16 beats (8 s at 120 BPM) up to a little seeded noise, so a loop point exists there."""
    frames = round(duration_s * sample_rate)
    t = np.arange(frames) / sample_rate
    beat_s = 60.0 / bpm
    out = np.zeros(frames)
    for beat in range(int(duration_s / beat_s) + 1):
        start = round(beat * beat_s * sample_rate)
        if start >= frames:
            break
        chord = _CHORDS[(beat // 4) % len(_CHORDS)]
        note = chord[(0, 1, 2, 1)[beat % 4]] + (12 if beat % 4 == 2 else 0)
        freq = 440.0 * 2.0 ** ((note - 69) / 12.0)
        seg = t[: frames - start]
        accent = (1.0, 0.7, 0.85, 0.7)[beat % 4]
        # A 3 ms attack, as played notes have: an instant one would itself be a click.
        envelope = (1.0 - np.exp(-seg / 0.003)) * np.exp(-seg / 0.25)
        out[start:] += accent * envelope * np.sin(2.0 * np.pi * freq * seg)
    # A pad holding each bar's chord gives steady chroma between onsets.
    bar = (t // (4 * beat_s)).astype(int) % len(_CHORDS)
    for voice in range(3):
        notes = np.array([c[voice] for c in _CHORDS])[bar] - 12
        freq = 440.0 * 2.0 ** ((notes - 69) / 12.0)
        phase = 2.0 * np.pi * np.cumsum(freq) / sample_rate
        out += 0.15 * np.sin(phase)
    out += 0.001 * np.random.default_rng(seed).standard_normal(frames)
    out *= _db_to_amp(peak_dbfs) / np.max(np.abs(out))
    pans = np.linspace(0.9, 1.1, channels)[:, None]
    return (out[None, :] * pans / pans.max()).astype(np.float32)


def fading(audio: np.ndarray, fall_db: float) -> np.ndarray:
    """`audio` falling steadily by `fall_db` from start to end: a block or window at every
    loudness in between, so any shift of a gate or a percentile shows."""
    gain = 10 ** (np.linspace(0.0, -fall_db, audio.shape[1]) / 20.0)
    return (audio * gain[None, :]).astype(np.float32)


def transients(
    duration_s: float,
    sample_rate: int,
    *,
    channels: int = 2,
    hits_per_s: float = 4.0,
    seed: int = 0,
) -> np.ndarray:
    """Loud drum-like hits (peaks near 0 dBFS) over a quiet tone bed: a high crest factor."""
    rng = np.random.default_rng(seed)
    frames = round(duration_s * sample_rate)
    t = np.arange(frames) / sample_rate
    out = 0.05 * np.sin(2.0 * np.pi * 220.0 * t)
    hit_len = round(0.08 * sample_rate)
    env = np.exp(-np.arange(hit_len) / (0.01 * sample_rate))
    for k in range(int(duration_s * hits_per_s)):
        start = round(k * sample_rate / hits_per_s)
        end = min(start + hit_len, frames)
        burst = rng.standard_normal(end - start) * env[: end - start]
        out[start:end] += 0.95 * burst / np.max(np.abs(burst))
    out *= 0.99 / np.max(np.abs(out))
    return np.tile(out, (channels, 1)).astype(np.float32)


def headerless_mp3(path: Path, duration_s: float, sample_rate: int) -> None:
    """A VBR MP3 as ffmpeg writes it to a pipe: no LAME header to say its length, and its first
    frames (3 s of a quiet tone) smaller than the rest (noise), so they misstate it."""
    audio = np.concatenate(
        [sine(440.0, -30.0, 3.0, sample_rate), pink_noise(-20.0, duration_s - 3.0, sample_rate)],
        axis=1,
    )
    wav = path.with_suffix(".source.wav")
    sf.write(wav, audio.T, sample_rate, subtype="FLOAT")
    encoder = ["-c:a", "libmp3lame", "-q:a", "2", "-f", "mp3", "-"]
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(wav), *encoder]
    path.write_bytes(subprocess.run(ffmpeg, capture_output=True, check=True).stdout)
    wav.unlink()
