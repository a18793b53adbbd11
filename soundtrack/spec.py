"""Resolved, immutable value objects that every stage receives (the manifest produces them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from soundtrack.formats import AudioFormat


@dataclass(frozen=True)
class Sampling:
    """MusicGen sampling settings; passed on every call, never stored as model state."""

    temperature: float = 1.0
    top_k: int = 250  # audiocraft's default; transformers' own default (50) sounds duller
    top_p: float = 0.0
    guidance: float = 3.0  # classifier-free guidance scale; >1 doubles the batch


@dataclass(frozen=True)
class AceStepSampling:
    """ACE-Step settings a manifest sets; None keeps the checkpoint's own."""

    steps: int | None = None
    shift: float | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class StableAudioSampling:
    """Stable Audio settings a manifest sets; None keeps the backend's default."""

    steps: int | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class LoudnessTarget:
    """Integrated loudness target, its tolerance, and the true-peak ceiling."""

    integrated_lufs: float
    true_peak_max_dbtp: float = -1.0
    tolerance_lu: float = 2.0


# Sony ASWG-R001 / EBU R128 / AES TD1004, TD1008 (see docs/manifest.md).
LOUDNESS_PROFILES: dict[str, LoudnessTarget] = {
    "console": LoudnessTarget(integrated_lufs=-24.0),
    "mobile": LoudnessTarget(integrated_lufs=-18.0),
    "web": LoudnessTarget(integrated_lufs=-16.0),
}
DEFAULT_LOUDNESS_PROFILE = "console"

# A track that sets no fade-out fades over a quarter of its length, at most 2 s: a 2 s fade fits
# any cue of 8 s or more (their specs are what they were), and a 1.5 s sting still renders.
DEFAULT_FADE_OUT_S = 2.0
FADE_OUT_FRACTION = 0.25


def default_fade_out_s(duration_s: float) -> float:
    """The fade-out of a non-loop that sets none: FADE_OUT_FRACTION of it, capped at 2 s."""
    return min(DEFAULT_FADE_OUT_S, FADE_OUT_FRACTION * duration_s)


@dataclass(frozen=True)
class GateLimits:
    """Limits of the quality gates; defaults follow the field notes' table of standards."""

    duration_tolerance_s: float = 0.5
    silence_floor_lufs: float = -70.0  # BS.1770 absolute gate
    dropout_max_s: float = 2.0
    dropout_threshold_dbfs: float = -60.0
    lead_silence_max_ms: float = 50.0
    trail_silence_max_s: float = 0.5  # loops are judged against 0 s
    clip_run_samples: int = 3  # this many consecutive full-scale samples count as one clip
    clipped_runs_max: int = 0
    dc_offset_max: float = 0.001  # warn only
    # Click at the loop wrap / local 90th percentile (calibrated in docs/gates.md)
    seam_jump_max_ratio: float = 4.0
    seam_loudness_max_lu: float = 1.5
    tempo_tolerance_pct: float = 4.0  # half and double tempo are accepted as well
    # Gate name -> "fail", "warn" or "off", where a manifest overrides the gate's own severity.
    severities: tuple[tuple[str, str], ...] = ()

    def severity(self, gate: str) -> str | None:
        """The severity the manifest sets for `gate`, if any."""
        return dict(self.severities).get(gate)


@dataclass(frozen=True)
class Mastering:
    """How a raw render becomes a master: loudness, fades, loop crossfade, output rate/channels."""

    loudness: LoudnessTarget
    fade_in_ms: float = 10.0
    fade_out_s: float = DEFAULT_FADE_OUT_S  # tracks that do not loop; see default_fade_out_s
    loop_crossfade_ms: float = 250.0
    sample_rate: int = 44100
    channels: int = 2


@dataclass(frozen=True)
class ParentAudio:
    """The published file a variation is rendered from: its parent's approved audio."""

    track_id: str
    key: str  # storage key, content-addressed
    sha256: str
    ext: str
    audio_sha256: str | None = None  # of its decoded samples; None in locks from before

    @property
    def identity(self) -> str:
        """What a variation's keys hold of it: its audio, whatever its tags (the spec hash
        among them) say; the file's own sha256 where its audio's was not recorded."""
        return self.audio_sha256 or self.sha256


@dataclass(frozen=True)
class TrackSpec:
    """Everything that shapes one track's audio, fully resolved; `spec_hash` identifies it."""

    soundtrack: str
    id: str
    duration_s: float
    render_duration_s: float  # seconds to generate: a loop renders room to find its end
    loop: bool
    seed: int
    model: str
    model_revision: str | None
    sampling: Sampling
    overlap_s: float
    mastering: Mastering
    gates: GateLimits
    formats: tuple[AudioFormat, ...]
    wav_bit_depth: int
    spec_hash: str
    prompt: str | None = None  # with the track's musical tags (bpm, key, mood) appended
    source: Path | None = None  # absolute path of an existing recording
    source_sha256: str | None = None
    # A recording with no duration of its own to meet: its length is what mastering keeps of it
    # (its silent ends trimmed), and the duration gates hold the files to that.
    own_length: bool = False
    # Hash of only what shapes the raw render (model, prompt, seed, sampling, duration): the
    # generation cache key, so re-mastering does not regenerate. None for source tracks.
    generation_key: str | None = None
    expectations: Path | None = None  # the team's own GX expectations (JSON), judged as gates
    expectations_sha256: str | None = None  # what the spec hash holds of them
    # Musical targets, outside the hashed fields (the prompt carries them as words, so they are
    # hashed there): ACE-Step takes them as conditioning with `plain_prompt`, the prompt without
    # the key and BPM words.
    bpm: int | None = None
    key: str | None = None
    time_signature: str | None = None
    lyrics: str | None = None  # words to sing; None: instrumental
    negative_prompt: str | None = None  # Stable Audio's guidance steers away from it
    ace_step_sampling: AceStepSampling | None = None
    stable_audio_sampling: StableAudioSampling | None = None
    sampling_flat: bool = False  # `sampling` was given in the flat form: MusicGen's settings
    plain_prompt: str | None = None
    bars: int | None = None  # a loop's length in whole bars; None: the bars nearest duration_s
    attempts: int = 1  # takes to try (re-rolls): a build policy, outside the spec hash
    take: int = 0  # which take this is: take k renders with seed + k
    take_of: str | None = None  # take 0's generation key, on every later take
    reference: Path | None = None  # a recording the report compares the render with
    reference_sha256: str | None = None  # its content: the lock's comparison is of this one
    stems: tuple[str, ...] = ()  # to separate the approved mix into and publish
    stem_model: str | None = None  # a separator's directory (resolved) or registered name
    variation_of: str | None = None  # the parent track's id
    # Set once the parent is approved; its sha256 is part of the spec hash and generation key.
    parent_audio: ParentAudio | None = None

    @property
    def beats_per_bar(self) -> int:
        """Beats in a bar: the time signature's upper number (4 when none is given)."""
        return beats_per_bar(self.time_signature)

    def bar_s(self, tempo_bpm: float) -> float:
        """One bar of this track's time signature at `tempo_bpm`."""
        return bar_seconds(tempo_bpm, self.time_signature)

    @property
    def bar_loop(self) -> bool:
        """A loop with a tempo target is cut to whole bars (docs/formats.md#loops-on-the-bar)."""
        return self.loop and self.bpm is not None


def beats_per_bar(time_signature: str | None) -> int:
    """Beats in a bar: the time signature's upper number (4 when none is given)."""
    return int(time_signature.split("/")[0]) if time_signature else 4


def bar_seconds(tempo_bpm: float, time_signature: str | None) -> float:
    """One bar at `tempo_bpm` in `time_signature`."""
    return beats_per_bar(time_signature) * 60.0 / tempo_bpm
