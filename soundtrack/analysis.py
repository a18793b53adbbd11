"""Music analysis of one piece of audio: tempo, beats, bars, key, loudness range, brightness,
onset rate and timbre. Numbers only; the gates judge them.

All features come from one STFT (2048 points, hop 512) of a mono mix resampled to 22050 Hz.

- Tempo: first the strongest lag of the onset envelope's autocorrelation (smoothed over 1.5
  frames, so a peak between two lags keeps its height) weighted by a log-normal prior at 120
  bpm (or at `bpm_hint`), one octave wide, as librosa.feature.tempo weighs its tempogram
  (which cost a third of the analysis time). A lag grid is 1-7 % coarse,
  so the period is refined on the same autocorrelation: the peak near one beat, then near 2,
  4, 8 ... beats, up to half the audio, each located by parabolic interpolation, so the
  period's error shrinks with the lag (measured: under 0.03 % at 55-190 bpm).
- Metrical level (octave). With `bpm_hint`: the octave of the estimate (x 2^k) that lies
  nearest the hint. Without one, the accent rule: accents are the onsets below 2 kHz
  (kick, snare, bass, chords; hi-hats barely count). Double when the off-beats carry at least
  0.6 of the beats' accent (the beat is really twice as fast), halve when every other beat
  carries under 0.4 of its neighbours' (those are off-beats), keeping within 50-200 bpm. A
  pulse still slower than 50 bpm is taken as the bar, and the tempo as its beats_per_bar beats.
  On the test grooves the off-beat ratio is 0.94 where doubling is right and at most 0.17
  elsewhere; the alternate-beat ratio 0.18 where halving is right and at least 0.69 elsewhere.
- No tempo (None, no beats) when the onset envelope's autocorrelation one beat away is under
  0.25 of its energy: there is no pulse (pink noise reads 0.07, the test grooves 0.55-0.99).
- Beats: the pulse train at the measured tempo whose phase meets the strongest onsets, each
  beat moved to the strongest onset within SNAP_FRAMES of it, from the first beat with an
  accent to the last (hi-hats alone are a pickup). Game cues keep a steady tempo, and a train
  at the refined tempo does not bend its end beats toward the cut as librosa's
  dynamic-programming tracker did; importing librosa.beat also compiled five numba functions
  in every process (2.6 s). The onset measure peaks before the attack, so beat times are frame
  centres plus ONSET_LAG_S (measured 12-18 ms on drums, plucks and chords). When every beat
  lies within STEADY_FRAMES of the beats' least-squares line (a steady tempo), the beats are put
  on that line: frames are 23 ms apart, and snapped beats were up to 16 ms off the test
  grooves' grid, fitted ones 3 ms at most. Music that speeds up or slows down keeps them as
  snapped.
- Downbeats: of the beats_per_bar phases of the beat sequence, the one whose beats score
  highest, a beat's score being the sum of two z-scores across all beats: its
  low-frequency (< 200 Hz: kick and bass) onset strength, and the harmonic change at it
  (1 - cosine similarity of the summed chroma amplitude of the bar before it and of the bar
  from it on). The phase's score is the median over its beats, so one outsized onset (the
  first after silence) does not decide it. Either cue alone finds the bars of the test grooves;
  without a kick, chords sharing notes (C, Am, F, G arpeggios) can mislead the chroma cue.
- Key: the mean chroma (bins centred on the music's own tuning, estimated first, so A=432 or
  A=448 reads as A=440 does; its square root, so loud chords do not drown the rest)
  correlated with Temperley's (Kostka-Payne) profiles in all 24 keys. key_confidence is the
  correlation margin: the best key's Pearson r minus the runner-up's (0 = a tie, often with the
  relative key; the test grooves 0.10-0.23). No key when no profile correlates at 0.5 or more
  (noise: 0.37).
- Timbre: mean and standard deviation of MFCCs 1-12 (not 0, which is level) over the frames
  within 60 dB of the loudest. timbre_distance is the root-mean-square difference of these 24
  numbers (log-mel dB units): 2-5 between variants of one arrangement (tempo, key, seed),
  12-34 between different instruments (drums and bass, plucks, chords, noise) in the tests.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from soundtrack.audio import check_signal, read_audio, to_channels
from soundtrack.errors import AudioError
from soundtrack.keys import Key, conventional_key, key_match, parse_key, semitones_apart
from soundtrack.loudness import loudness_range_lu
from soundtrack.numba_cache import load_librosa

ANALYSIS_RATE = 22050
_N_FFT = 2048
_HOP = 512
_FRAME_RATE = ANALYSIS_RATE / _HOP
_LEAD_FRAMES = _N_FFT // (2 * _HOP)  # half a window of silence before the audio
MIN_DURATION_S = 0.4  # the shortest track a manifest may ask for (schema.MIN_DURATION_S)
# Beats and a key need a second of music: in a shorter cue the beat tracker finds one "beat" and
# reads a tempo off it. A shorter one has neither (its tempo gate fails, as a drone's does).
MIN_PULSE_S = 1.0
ONSET_LAG_S = 0.016
# Leading and trailing beats whose strongest nearby accent is under this fraction of the beats'
# RMS accent are silence or a pickup, not the music's beat (hi-hats alone read 0.37-0.56 on
# the test grooves, their beats 0.75 and up; librosa's trim_beats cuts at 0.5 of all onsets).
BEAT_ONSET_FLOOR = 0.65
SNAP_FRAMES = 2  # a beat moves to the strongest onset this close (46 ms)
# A beat whose strongest onset that close is under this part of the median beat's is in a break
# (silence, a held note): snapped, it would follow the noise.
BREAK_ONSET_RATIO = 0.1
# Snapped beats of the test grooves lie within 0.64 frames of their line; a groove going from
# 120 to 123 bpm halfway, 2.04 (on its line, its beats were 43 ms off, snapped 9 ms).
STEADY_FRAMES = 1.0
ACCENT_MAX_HZ = 2000.0
DOWNBEAT_MAX_HZ = 200.0
PULSE_CLARITY_MIN = 0.25
TEMPO_RANGE_BPM = (30.0, 320.0)  # librosa's tempo estimate's range
# Harmonic change (1 - cosine of bar-long chroma) below this spread is no chord change.
CHORD_CHANGE_SPREAD_MIN = 0.01
COARSE_SMOOTHING_FRAMES = 1.5  # the Gaussian's width (sigma) over the lag grid, in frames
DOUBLE_OFFBEAT_RATIO = 0.6
HALVE_ALTERNATE_RATIO = 0.4
OCTAVE_RULE_BPM = (50.0, 200.0)
KEY_CORRELATION_MIN = 0.5
TIMBRE_ACTIVE_DB = 60.0
SIMILAR_TIMBRE_MAX = 8.0  # timbre distance that compare() still calls similar
_MFCC_COUNT = 12
# Temperley (1999) key profiles, from the Kostka-Payne corpus, tonic first.
_MAJOR_PROFILE = np.array(
    [0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400]
)
_MINOR_PROFILE = np.array(
    [0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330]
)


@dataclass(frozen=True)
class Analysis:
    """What the analysis measured; positions are in samples at `sample_rate`."""

    sample_rate: int
    frames: int
    tempo_bpm: float | None  # None when no pulse was found (a drone, noise)
    beats: tuple[int, ...]
    downbeats: tuple[int, ...]  # bar starts, a subset of beats
    beats_per_bar: int
    key: str | None  # e.g. "A minor", spelt as soundtrack.keys.conventional_key does
    key_confidence: float  # correlation margin over the runner-up key, 0..1
    loudness_range_lu: float  # EBU Tech 3342 LRA
    spectral_centroid_hz: float  # of the summed magnitude spectrum (frames weighted by level)
    onset_rate_per_s: float
    timbre: tuple[float, ...]  # MFCC 1-12 means, then their standard deviations; () silent


@dataclass(frozen=True)
class ComparisonRow:
    """One measure of two analyses, as text: its value in each and how they differ."""

    name: str
    a: str
    b: str
    difference: str


@dataclass(frozen=True)
class Comparison:
    """How b differs from a: the numbers, a table and a one-line verdict."""

    tempo_ratio: float | None  # b's tempo over a's
    key_relation: str  # same, relative, transposed, different or unknown
    key_semitones: int | None  # b's tonic above a's, -5..+6
    loudness_range_difference_lu: float  # b - a
    centroid_ratio: float | None  # b / a; None when either is silent
    timbre_distance: float | None  # None when either is silent
    rows: tuple[ComparisonRow, ...]
    verdict: str

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class _Features:
    """The frame-rate features of the mono mix at ANALYSIS_RATE."""

    onsets: np.ndarray  # log-mel flux, all bands
    accents: np.ndarray  # log-mel flux below ACCENT_MAX_HZ
    low_onsets: np.ndarray  # log-mel flux below DOWNBEAT_MAX_HZ
    chroma: np.ndarray  # (12, frames) power per pitch class
    timbre: tuple[float, ...]
    centroid_hz: float


def analyse(
    audio: np.ndarray,
    sample_rate: int,
    *,
    beats_per_bar: int = 4,
    bpm_hint: float | None = None,
) -> Analysis:
    """Measure (channels, frames) audio: tempo, beats and bars, key, LRA, brightness, timbre."""
    # 1. Check inputs
    _check_inputs(audio, sample_rate, beats_per_bar, bpm_hint)
    # 2. One mono mix at the analysis rate, one STFT, every feature from it
    features = _features(audio, sample_rate)
    pulse = audio.shape[1] >= MIN_PULSE_S * sample_rate
    # 3. Tempo and its metrical level
    tempo_bpm = _tempo(features, bpm_hint, beats_per_bar) if pulse else None
    # 4. Beats and bars
    beat_frames = np.zeros(0, dtype=np.int64)
    grouping = _grouping(beats_per_bar, bpm_hint)
    if tempo_bpm is not None:
        beat_frames = _beats(features.onsets, features.accents, tempo_bpm / grouping)
    beat_positions = _steady(beat_frames)
    if grouping > 1:
        beat_positions = _subdivided(beat_positions, grouping, features.onsets.size)
        beat_frames = np.round(beat_positions).astype(np.int64)
    phase = _downbeat_phase(features, beat_frames, beats_per_bar)
    # 5. Key
    key, key_confidence = _key(features.chroma) if pulse else (None, 0.0)
    # 6. Loudness range on the audio as given (all channels, full rate): LRA is defined there
    loudness_range = loudness_range_lu(audio, sample_rate)
    return Analysis(
        sample_rate=sample_rate,
        frames=audio.shape[1],
        tempo_bpm=tempo_bpm,
        beats=_to_samples(beat_positions, sample_rate, audio.shape[1]),
        downbeats=_to_samples(beat_positions[phase::beats_per_bar], sample_rate, audio.shape[1]),
        beats_per_bar=beats_per_bar,
        key=None if key is None else key.name,
        key_confidence=key_confidence,
        loudness_range_lu=loudness_range,
        spectral_centroid_hz=features.centroid_hz,
        onset_rate_per_s=_onset_count(features.onsets) * sample_rate / audio.shape[1],
        timbre=features.timbre,
    )


def analysis_row(a: Analysis) -> dict[str, float | int | str | None]:
    """The scalar measures of an analysis for a report (no beat lists)."""
    return {
        "duration_s": a.frames / a.sample_rate,
        "tempo_bpm": a.tempo_bpm,
        "beat_count": len(a.beats),
        "beats_per_bar": a.beats_per_bar,
        "first_downbeat_s": a.downbeats[0] / a.sample_rate if a.downbeats else None,
        "key": a.key,
        "key_confidence": a.key_confidence,
        "loudness_range_lu": a.loudness_range_lu,
        "spectral_centroid_hz": a.spectral_centroid_hz,
        "onset_rate_per_s": a.onset_rate_per_s,
    }


def timbre_distance(a: Analysis, b: Analysis) -> float | None:
    """Root-mean-square difference of the MFCC statistics (module doc): small for the same
    sound, large for a different one; None when either is silent (no timbre)."""
    if not a.timbre or not b.timbre:
        return None
    return float(np.sqrt(np.mean((np.asarray(a.timbre) - np.asarray(b.timbre)) ** 2)))


def compare(a: Analysis, b: Analysis) -> Comparison:
    """How b differs from a in tempo, key, loudness range, brightness and timbre."""
    tempo_ratio = None
    if a.tempo_bpm is not None and b.tempo_bpm is not None:
        tempo_ratio = b.tempo_bpm / a.tempo_bpm
    key_relation, semitones, key_text = _key_relation(a.key, b.key)
    lra_difference = b.loudness_range_lu - a.loudness_range_lu
    silent = [name for name, x in (("a", a), ("b", b)) if not x.timbre]
    # Silence, or DC alone (all at 0 Hz), has no brightness to compare.
    bright = a.spectral_centroid_hz > 0.0 and b.spectral_centroid_hz > 0.0
    centroid_ratio = b.spectral_centroid_hz / a.spectral_centroid_hz if bright else None
    distance = timbre_distance(a, b)
    similar = distance is not None and distance <= SIMILAR_TIMBRE_MAX
    timbre_text = (
        f"{' and '.join(silent)} silent"
        if distance is None
        else f"{'similar' if similar else 'different'} timbre"
    )
    rows = (
        ComparisonRow(
            "tempo_bpm",
            _text(a.tempo_bpm, "{:.2f}"),
            _text(b.tempo_bpm, "{:.2f}"),
            "no tempo" if tempo_ratio is None else f"b/a = {tempo_ratio:.3f}",
        ),
        ComparisonRow("key", a.key or "none", b.key or "none", key_text),
        ComparisonRow(
            "loudness_range_lu",
            f"{a.loudness_range_lu:.1f}",
            f"{b.loudness_range_lu:.1f}",
            f"b - a = {lra_difference:+.1f} LU",
        ),
        ComparisonRow(
            "spectral_centroid_hz",
            f"{a.spectral_centroid_hz:.0f}",
            f"{b.spectral_centroid_hz:.0f}",
            "no brightness" if centroid_ratio is None else f"b/a = {centroid_ratio:.2f}",
        ),
        ComparisonRow(
            "timbre",
            "",
            "",
            timbre_text if distance is None else f"distance {distance:.1f} ({timbre_text})",
        ),
    )
    no_tempo = [name for name, x in (("a", a), ("b", b)) if x.tempo_bpm is None]
    tempo_text = (
        f"no tempo in {' and '.join(no_tempo)}"
        if tempo_ratio is None
        else _tempo_verdict(tempo_ratio)
    )
    verdict = ", ".join([tempo_text, key_text, timbre_text])
    return Comparison(
        tempo_ratio=tempo_ratio,
        key_relation=key_relation,
        key_semitones=semitones,
        loudness_range_difference_lu=lra_difference,
        centroid_ratio=centroid_ratio,
        timbre_distance=distance,
        rows=rows,
        verdict=verdict,
    )


def analyse_file(path: Path, *, beats_per_bar: int = 4, bpm_hint: float | None = None) -> Analysis:
    """`analyse` of a recording, any channel count (more than two are mixed down to one); an
    AudioError names the file."""
    audio, sample_rate = read_audio(path)
    return analyse_decoded(path, audio, sample_rate, beats_per_bar=beats_per_bar, bpm_hint=bpm_hint)


def analyse_decoded(
    path: Path,
    audio: np.ndarray,
    sample_rate: int,
    *,
    beats_per_bar: int = 4,
    bpm_hint: float | None = None,
) -> Analysis:
    """analyse_file of `path` already decoded to `audio`: its samples are read once."""
    if audio.shape[0] > 2:
        audio = to_channels(audio, 1)
    try:
        return analyse(audio, sample_rate, beats_per_bar=beats_per_bar, bpm_hint=bpm_hint)
    except AudioError as exc:  # "audio is 0.10 s long": which of the files
        raise AudioError(f"{path}: {exc}") from None


def _check_inputs(
    audio: np.ndarray, sample_rate: int, beats_per_bar: int, bpm_hint: float | None
) -> None:
    check_signal(
        audio, sample_rate, name="audio", needs="the analysis", min_duration_s=MIN_DURATION_S
    )
    if beats_per_bar < 1:
        raise ValueError(f"beats_per_bar must be at least 1, got {beats_per_bar}")
    if bpm_hint is not None and not bpm_hint > 0.0:
        raise ValueError(f"bpm_hint must be a positive tempo in bpm, got {bpm_hint}")


# With no pitch to hear (silence, DC, a click), librosa's tuning estimate says so and takes 0
# cents, the right answer: the warning would reach a user's terminal as noise.
warnings.filterwarnings(
    "ignore", message="Trying to estimate tuning from empty frequency set", category=UserWarning
)


def _features(audio: np.ndarray, sample_rate: int) -> _Features:
    librosa = load_librosa()  # numba compiles on first use: keep it off the import path
    import soxr

    mono = audio.mean(axis=0, dtype=np.float32)
    if sample_rate != ANALYSIS_RATE:
        mono = soxr.resample(mono, sample_rate, ANALYSIS_RATE)
    mono -= mono.mean()  # an offset is inaudible, but it darkens the centroid and the timbre
    # Silence ahead, so an attack on the first sample is a rise from one frame to the next.
    mono = np.concatenate([np.zeros(_LEAD_FRAMES * _HOP, np.float32), mono])
    magnitude = np.abs(librosa.stft(mono, n_fft=_N_FFT, hop_length=_HOP))
    power = magnitude**2
    mel = librosa.feature.melspectrogram(S=power, sr=ANALYSIS_RATE)
    mel_db = librosa.power_to_db(mel)
    mel_hz = librosa.mel_frequencies(n_mels=mel.shape[0], fmax=ANALYSIS_RATE / 2)

    # Frames whose window reaches past the end: the cut splatters into every band, and it
    # read as an onset (two of them a pulse, in a plain tone of 2 s).
    cut = np.arange(magnitude.shape[1]) * _HOP + _N_FFT // 2 > mono.size

    def flux(bands: np.ndarray) -> np.ndarray:
        # center=False: frame t is the rise into the STFT frame centred at t * hop.
        envelope: np.ndarray = librosa.onset.onset_strength(
            S=mel_db[bands], sr=ANALYSIS_RATE, hop_length=_HOP, center=False
        )
        envelope[cut[: envelope.size]] = 0.0
        return envelope

    level_db = 10.0 * np.log10(mel.sum(axis=0) + 1e-20)
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=_MFCC_COUNT + 1)
    active = mfcc[1:, level_db >= level_db.max() - TIMBRE_ACTIVE_DB]  # not 0: it is the level
    freqs = librosa.fft_frequencies(sr=ANALYSIS_RATE, n_fft=_N_FFT)
    spectrum = magnitude.sum(axis=1)
    sound = bool(spectrum.any())  # digital silence has no timbre or brightness
    return _Features(
        onsets=flux(np.ones(mel.shape[0], dtype=bool)),
        accents=flux(mel_hz < ACCENT_MAX_HZ),
        low_onsets=flux(mel_hz < DOWNBEAT_MAX_HZ),
        chroma=librosa.feature.chroma_stft(S=power, sr=ANALYSIS_RATE, tuning=None, norm=None),
        timbre=tuple(float(v) for v in np.concatenate([active.mean(axis=1), active.std(axis=1)]))
        if sound
        else (),
        centroid_hz=float(freqs @ spectrum / max(float(spectrum.sum()), 1e-20)),
    )


def _grouping(beats_per_bar: int, bpm_hint: float | None) -> int:
    """Beats felt as one pulse: a compound metre's come in threes (6/8 at 180 eighths pulses at
    60, and its eighths may not sound at all); the pulse is found near the hint's, and the beats
    are its thirds. A slow one (a pulse under the tempo range: 6/8 at 80) is felt in its
    eighths; without a hint, the beats are what the accent rule finds."""
    compound = beats_per_bar % 3 == 0 and beats_per_bar > 3
    felt = bpm_hint is not None and bpm_hint / 3 >= TEMPO_RANGE_BPM[0]
    return 3 if compound and felt else 1


def _tempo(features: _Features, bpm_hint: float | None, beats_per_bar: int) -> float | None:
    """The refined tempo at the chosen metrical level, or None without a clear pulse."""
    autocorrelation = _autocorrelation(features.onsets)
    if autocorrelation[0] <= 0.0:
        return None
    grouping = _grouping(beats_per_bar, bpm_hint)
    prior_bpm = bpm_hint / grouping if bpm_hint is not None else 120.0
    coarse = _coarse_period(autocorrelation, prior_bpm)
    period = _refined_period(autocorrelation, coarse)
    if period is None:
        return None
    beat_lag = round(period)
    clarity = autocorrelation[beat_lag - 1 : beat_lag + 2].max() / autocorrelation[0]
    if clarity < PULSE_CLARITY_MIN:
        return None
    bpm = 60.0 * _FRAME_RATE / period
    if bpm_hint is not None:
        # The octave of the estimate nearest the hint: a chord every bar at 120 bpm pulses at 30.
        # A pulse slower than any beat may be a bar of three, which no octave reaches (a chord
        # every bar of 3/4 at 120 pulses at 40): its beats are candidates too.
        candidates = [bpm]
        if bpm < OCTAVE_RULE_BPM[0]:
            candidates.append(bpm * (beats_per_bar // grouping))
        octaves = [c * 2.0 ** round(math.log2(prior_bpm / c)) for c in candidates]
        return min(octaves, key=lambda c: abs(math.log2(c / prior_bpm))) * grouping
    bpm *= _accent_level(features.accents, period, bpm)
    if bpm < OCTAVE_RULE_BPM[0]:
        # A pulse slower than any beat is the bar (a chord attacked every 2 s, nothing between):
        # its beats are the bar's.
        bpm *= beats_per_bar
    return bpm


_COARSE_KERNEL = np.exp(-0.5 * (np.arange(-4, 5) / COARSE_SMOOTHING_FRAMES) ** 2)


def _coarse_period(autocorrelation: np.ndarray, prior_bpm: float) -> float:
    """The lag (frames) of the strongest periodicity within TEMPO_RANGE_BPM, weighted as
    librosa.feature.tempo weights its tempogram: log-normal, one octave wide, at `prior_bpm`."""
    slowest, fastest = TEMPO_RANGE_BPM
    lags = np.arange(
        math.ceil(60.0 * _FRAME_RATE / fastest),
        min(math.floor(60.0 * _FRAME_RATE / slowest), autocorrelation.size - 1) + 1,
    )
    weight = np.exp(-0.5 * np.log2(60.0 * _FRAME_RATE / lags / prior_bpm) ** 2)
    # Sharp attacks make peaks about one frame wide: one between two lags reads half its height
    # and loses to a multiple of the beat that falls on a lag (175 bpm, prior 87.5: 3 beats).
    # Smoothed, every peak is sampled near its height.
    smoothed = np.convolve(autocorrelation, _COARSE_KERNEL, mode="same")
    return float(lags[np.argmax(np.maximum(smoothed[lags], 0.0) * weight)])


def _autocorrelation(envelope: np.ndarray) -> np.ndarray:
    """Unbiased autocorrelation of the mean-removed envelope at lags 0 .. len - 1."""
    centred = envelope - envelope.mean()
    n = centred.size
    spectrum = np.fft.rfft(centred, 2 * n)
    products = np.fft.irfft(np.abs(spectrum) ** 2)[:n]
    unbiased: np.ndarray = products / (n - np.arange(n))
    return unbiased


def _refined_period(autocorrelation: np.ndarray, period: float) -> float | None:
    """The beat period in frames from the autocorrelation peaks near k * `period` for k = 1, 2,
    4 ... and finally the most beats that fit in half the envelope."""
    usable = autocorrelation.size // 2
    beats = 1
    while True:
        lag = _peak_near(autocorrelation, beats * period, period / 5.0)
        if lag is None:
            return None if beats == 1 else period
        period = lag / beats
        if 2 * beats * period > usable:
            break
        beats *= 2
    most = int(usable // period)
    if most > beats:
        lag = _peak_near(autocorrelation, most * period, period / 5.0)
        if lag is not None:
            period = lag / most
    return period


def _peak_near(values: np.ndarray, centre: float, half_width: float) -> float | None:
    """The largest value within `half_width` of `centre`, located between samples by a parabola
    through it and its neighbours (a value at the window's edge, rising beyond it, stays
    there); None if the window leaves the array."""
    first = max(1, math.floor(centre - half_width))
    last = min(values.size - 2, math.ceil(centre + half_width))
    if last < first:
        return None
    i = first + int(np.argmax(values[first : last + 1]))
    before, at, after = values[i - 1], values[i], values[i + 1]
    if not before <= at >= after:
        return float(i)  # not a peak: a parabola's vertex would lie anywhere (a steady tone)
    curvature = before - 2.0 * at + after
    return float(i + (0.5 * (before - after) / curvature if curvature < 0.0 else 0.0))


def _accent_level(accents: np.ndarray, period: float, bpm: float) -> float:
    """2, 1 or 0.5: the factor to the metrical level whose beats carry the accents."""
    phases = np.arange(0.0, period, 0.5)
    on_beat = [_pulse_strength(accents, period, phase) for phase in phases]
    phase = float(phases[int(np.argmax(on_beat))])
    on = max(on_beat)
    if on <= 0.0:
        return 1.0
    slowest, fastest = OCTAVE_RULE_BPM
    off = _pulse_strength(accents, period, phase + period / 2.0)
    if off >= DOUBLE_OFFBEAT_RATIO * on and 2.0 * bpm <= fastest:
        return 2.0
    first = _pulse_strength(accents, 2.0 * period, phase)
    second = _pulse_strength(accents, 2.0 * period, phase + period)
    if min(first, second) < HALVE_ALTERNATE_RATIO * max(first, second) and bpm / 2.0 >= slowest:
        return 0.5
    return 1.0


def _pulse_strength(envelope: np.ndarray, period: float, phase: float) -> float:
    """Mean of the envelope's local maxima at phase, phase + period, phase + 2 * period ..."""
    at = np.round(phase + period * np.arange(int((envelope.size - phase) / period) + 1))
    at = at[at < envelope.size].astype(np.int64)
    return float(_local_max(envelope, at).mean()) if at.size else 0.0


def _local_max(envelope: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The envelope's largest value within one frame of each index in `at`."""
    padded = np.pad(envelope, 1)
    peaks: np.ndarray = np.maximum(np.maximum(padded[at], padded[at + 1]), padded[at + 2])
    return peaks


def _beats(onsets: np.ndarray, accents: np.ndarray, tempo_bpm: float) -> np.ndarray:
    """Beat frames: the pulse train at the measured tempo whose phase meets the strongest
    onsets, each beat put on the strongest onset within SNAP_FRAMES of it; the train runs from
    the first beat with an accent to the last (silence, or a pickup of hi-hats, has none)."""
    period = 60.0 * _FRAME_RATE / tempo_bpm
    phases = np.arange(0.0, period, 0.5)
    phase = float(phases[int(np.argmax([_pulse_strength(onsets, period, p) for p in phases]))])
    grid = np.round(phase + period * np.arange(int((onsets.size - 1 - phase) / period) + 1))
    grid = grid.astype(np.int64)
    if grid.size == 0:
        return grid
    offsets = np.arange(-SNAP_FRAMES, SNAP_FRAMES + 1)
    around = np.clip(grid[:, None] + offsets[None, :], 0, onsets.size - 1)
    strength = accents[around].max(axis=1)
    heard = np.flatnonzero(strength > BEAT_ONSET_FLOOR * np.sqrt(np.mean(strength**2)))
    if heard.size == 0:
        return grid[:0]
    kept = slice(int(heard[0]), int(heard[-1]) + 1)
    index = np.arange(kept.stop - kept.start)
    near = onsets[around[kept]]
    snapped: np.ndarray = around[kept][index, np.argmax(near, axis=1)]
    # A beat with no onset near it (a break in the music) goes where the beats heard around
    # it put it: the strongest of its silent neighbours was the first, SNAP_FRAMES early.
    peaks = near.max(axis=1)
    quiet = peaks < BREAK_ONSET_RATIO * np.median(peaks)
    heard_at = index[~quiet]  # never empty: the median beat's peak is heard
    between = quiet & (index > heard_at[0]) & (index < heard_at[-1])
    snapped[between] = np.round(np.interp(index[between], heard_at, snapped[heard_at]))
    # Before the first beat heard or after the last, the train's own beat (np.interp would
    # give them all the nearest heard beat's frame).
    outside = quiet & ~between
    snapped[outside] = grid[kept][outside]
    return snapped


def _steady(beats: np.ndarray) -> np.ndarray:
    """The beat frames on their least-squares line when every beat lies within STEADY_FRAMES
    of it (a steady tempo: an engine schedules on these, and snapping to whole frames put them
    up to 23 ms off); as they are otherwise (the music speeds up or slows down)."""
    if beats.size < 4:
        return beats.astype(np.float64)
    index = np.arange(beats.size, dtype=np.float64)
    slope, intercept = np.polyfit(index, beats.astype(np.float64), 1)
    line: np.ndarray = slope * index + intercept
    steady = float(np.max(np.abs(beats - line))) <= STEADY_FRAMES
    return line if steady else beats.astype(np.float64)


def _subdivided(pulses: np.ndarray, parts: int, frames: int) -> np.ndarray:
    """The beats of a train of pulses, `parts` evenly in each (the last pulse's too, at the
    last pulse's length, and a pickup before the first at the first's), within `frames`
    analysis frames."""
    if pulses.size < 2:
        return pulses
    steps = np.append(np.diff(pulses), pulses[-1] - pulses[-2]) / parts
    beats = (pulses[:, None] + steps[:, None] * np.arange(parts)).ravel()
    pickup = pulses[0] - steps[0] * np.arange(parts - 1, 0, -1)
    beats = np.concatenate([pickup, beats])
    inside: np.ndarray = beats[(beats >= 0) & (beats <= frames - 1)]
    return inside


def _downbeat_phase(features: _Features, beats: np.ndarray, beats_per_bar: int) -> int:
    """The phase (0 .. beats_per_bar - 1) of the beats that start bars: see the module doc."""
    if beats.size == 0:
        return 0
    low_at_beat = _local_max(features.low_onsets, beats)
    # The chroma of the bar before each beat and of the bar from it on (the last beat lasts
    # one median beat): bar-long windows average out notes that change on every beat
    # (arpeggios), so they differ most where the chords change.
    step = int(np.median(np.diff(beats))) if beats.size > 1 else 1
    bounds = np.clip(np.append(beats, beats[-1] + step), 0, features.chroma.shape[1])
    cumulative = np.cumsum(np.pad(np.sqrt(features.chroma), ((0, 0), (1, 0))), axis=1)[:, bounds]
    width = beats_per_bar
    inside = np.arange(width, beats.size - width + 1)
    before = cumulative[:, inside] - cumulative[:, inside - width]
    after = cumulative[:, inside + width] - cumulative[:, inside]
    norms = np.linalg.norm(before, axis=0) * np.linalg.norm(after, axis=0) + 1e-12
    change = np.full(beats.size, np.nan)  # no full bar on both sides: no vote
    change[inside] = 1.0 - np.sum(before * after, axis=0) / norms
    # A chord held through every bar changes by rounding error (1e-7): scaled to unit spread,
    # that noise outvoted a kick accented on each downbeat.
    score = _zscore(low_at_beat) + _zscore(change, least_spread=CHORD_CHANGE_SPREAD_MIN)
    phases = range(min(beats_per_bar, beats.size))
    # The median: the first beat after silence has an outsized onset, whatever its phase.
    return max(phases, key=lambda p: float(np.median(score[p::beats_per_bar])))


def _zscore(values: np.ndarray, least_spread: float = 0.0) -> np.ndarray:
    """Standard scores, over a spread of at least `least_spread`; 0 where the value is missing
    (NaN) or all values are equal."""
    if np.isnan(values).all():
        return np.zeros_like(values)
    spread = max(float(np.nanstd(values)), least_spread)
    scaled = (values - np.nanmean(values)) / spread if spread > 0.0 else np.zeros_like(values)
    filled: np.ndarray = np.nan_to_num(scaled)
    return filled


def _key(chroma: np.ndarray) -> tuple[Key | None, float]:
    """The best-correlating key and its margin over the runner-up (module doc)."""
    profile = np.sqrt(chroma.mean(axis=1))
    profile -= profile.mean()
    if not profile.any():
        return None, 0.0  # silence, or every pitch class alike
    # Rows 0-11: the major keys on C .. B; rows 12-23: the minor keys.
    templates = np.stack(
        [np.roll(t, k) for t in (_MAJOR_PROFILE, _MINOR_PROFILE) for k in range(12)]
    )
    templates -= templates.mean(axis=1, keepdims=True)
    r = templates @ profile / (np.linalg.norm(templates, axis=1) * np.linalg.norm(profile))
    runner_up, best = np.argsort(r)[-2:]
    if r[best] < KEY_CORRELATION_MIN:
        return None, 0.0
    key = conventional_key(int(best) % 12, "major" if best < 12 else "minor")
    return key, float(min(r[best] - r[runner_up], 1.0))


def _onset_count(onsets: np.ndarray) -> int:
    import librosa

    found = librosa.onset.onset_detect(onset_envelope=onsets, sr=ANALYSIS_RATE, hop_length=_HOP)
    return int(np.asarray(found).size)


def _to_samples(frames: np.ndarray, sample_rate: int, length: int) -> tuple[int, ...]:
    """Analysis frames as sample positions at `sample_rate`, corrected by ONSET_LAG_S; a beat
    the tracker put at the very end (past the last sample) is left out."""
    seconds = (frames - _LEAD_FRAMES) * (_HOP / ANALYSIS_RATE) + ONSET_LAG_S
    samples = np.maximum(np.round(seconds * sample_rate), 0).astype(np.int64)
    return tuple(int(s) for s in samples if s < length)


def _key_relation(a: str | None, b: str | None) -> tuple[str, int | None, str]:
    """(relation, b's tonic above a's, text) of two key names."""
    if a is None or b is None:
        return "unknown", None, "key unknown"
    key_a, key_b = parse_key(a), parse_key(b)
    semitones = semitones_apart(key_a, key_b)
    match = key_match(key_b, key_a)
    if match == "same":
        return "same", 0, "same key"
    if match == "relative":
        return "relative", semitones, "relative keys"
    if key_a.mode == key_b.mode:
        return "transposed", semitones, f"b is a {semitones:+d} semitone transposition"
    return "different", semitones, f"different mode, tonic {semitones:+d} semitones"


def _tempo_verdict(ratio: float) -> str:
    if abs(ratio - 1.0) < 0.005:
        return "same tempo"
    return f"b is {ratio:.2f}x faster" if ratio > 1.0 else f"b is {1.0 / ratio:.2f}x slower"


def _text(value: float | None, spec: str) -> str:
    return "none" if value is None else spec.format(value)
