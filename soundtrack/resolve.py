"""Resolving a validated manifest into TrackSpecs: defaults merged, lengths read, hashes computed.

Reads the files a manifest names (recordings, expectations, local models) and asks mastering's and
loops' arithmetic whether each track's settings can render together (docs/manifest.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, get_args

from soundtrack import PIPELINE_VERSION, RENDER_VERSION
from soundtrack.catalog import is_local, keyed_family
from soundtrack.errors import AudioError, InputError
from soundtrack.gates import GATE_NAMES
from soundtrack.hashing import file_sha256
from soundtrack.loops import (
    SEARCH_S,
    SHORTEST_LOOP_S,
    SLOWEST_BAR_RATIO,
    bar_loop_s,
    loop_end_range,
    loop_tail_samples,
    render_duration_s,
    shortest_loop_s,
)
from soundtrack.loudness import BLOCK_S
from soundtrack.paths import user_path
from soundtrack.schema import (
    MAX_DURATION_S,
    MIN_DURATION_S,
    SEED_MAX,
    Defaults,
    GateSeverity,
    LoudnessSpec,
    Manifest,
    Track,
)
from soundtrack.spec import (
    DEFAULT_LOUDNESS_PROFILE,
    LOUDNESS_PROFILES,
    AceStepSampling,
    GateLimits,
    LoudnessTarget,
    Mastering,
    ParentAudio,
    Sampling,
    StableAudioSampling,
    TrackSpec,
    bar_seconds,
    default_fade_out_s,
)

DEFAULT_MODEL = "facebook/musicgen-small"
MAX_SOURCE_CHANNELS = 2  # mastering maps mono or stereo (audio.to_channels)
# 600 s at 320 kbit/s is 24 MB; the rest is room for tags (cover art). Beyond it decoding a
# file only to refuse it as too long took validate 24 s (a 2 GB file).
MAX_MP3_BYTES = 64 * 2**20
# Fields that change the generated (raw) audio; the generation cache is keyed on these alone, so
# re-mastering to a new loudness profile does not regenerate.
_GENERATION_FIELDS = ("model", "model_revision", "prompt", "seed", "sampling", "overlap_s")
_MASTERING_FIELDS = ("fade_in_ms", "fade_out_s", "loop_crossfade_ms", "sample_rate", "channels")


def derived_seed(soundtrack: str, track_id: str) -> int:
    """A stable seed for tracks that set none, so rebuilds reproduce the same audio."""
    digest = hashlib.sha256(f"{soundtrack}/{track_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def full_prompt(track: Track, *, musical_tags: bool = True) -> str | None:
    """The prompt with the track's tags appended, as a text-only model (MusicGen) receives it;
    without key and BPM (`musical_tags=False`) for a model that takes them as conditioning."""
    if track.prompt is None:
        return None
    parts = [track.prompt.rstrip(". ")]
    if track.key and musical_tags:
        parts.append(track.key)
    if track.bpm and musical_tags:
        parts.append(f"{track.bpm} BPM")
    if track.time_signature and musical_tags:
        parts.append(f"{track.time_signature} time")
    if track.mood:
        parts.append(track.mood)
    if track.instruments:
        parts.append(", ".join(track.instruments))
    return ", ".join(parts)


def seconds_to_render(
    duration_s: float, mastering: Mastering, *, loop: bool, bar_s: float | None = None
) -> float:
    """Seconds to generate: a loop needs room to search for its end and a crossfade tail; a
    loop cut on bars (`bar_s` long at its bpm) also room for its first downbeat and for a
    tempo as slow as the tempo gate allows."""
    if not loop:
        return duration_s
    if bar_s is not None:
        slowest_s = bar_loop_s(duration_s, bar_s) * SLOWEST_BAR_RATIO
        return render_duration_s(slowest_s + bar_s, mastering.loop_crossfade_ms)
    return render_duration_s(duration_s, mastering.loop_crossfade_ms)


_SEVERITIES = get_args(GateSeverity)
_SEVERITY_IS = f"SEVERITY is one of {', '.join(_SEVERITIES)}"


def gate_severities(values: Sequence[str], flag: str = "--gate") -> dict[str, str]:
    """`NAME=SEVERITY` settings (tempo=warn) as a mapping; InputError naming every one that is
    wrong."""
    out: dict[str, str] = {}
    malformed, twice, unknown = [], [], []
    for value in values:
        name, equals, severity = value.partition("=")
        if not equals or not name:
            malformed.append(f"{flag} {value!r}: write GATE=SEVERITY ({_SEVERITY_IS})")
        elif name not in GATE_NAMES:
            malformed.append(f"{flag} {value!r}: no gate is named {name!r}")
            unknown.append(name)
        elif severity not in _SEVERITIES:
            malformed.append(f"{flag} {value!r}: {_SEVERITY_IS}")
        elif out.get(name, severity) != severity:  # which one the user meant, only they know
            twice.append(f"{flag} sets {name} twice: {name}={out[name]} and {value}; give it once")
        else:
            out[name] = severity
    problems = malformed + twice
    names = f" (GATE is one of {', '.join(sorted(GATE_NAMES))})" if unknown else ""
    if len(problems) == 1:
        raise InputError(problems[0] + names)
    if problems:
        raise InputError(f"{len(problems)} problems with {flag}{names}", problems)
    return out


def _gate_limits(settings: dict[str, Any]) -> GateLimits:
    """The gates' limits and the severities a manifest sets (GatesSpec holds both)."""
    severities = {k: v for k, v in settings.items() if k in GATE_NAMES}
    limits = {k: v for k, v in settings.items() if k not in GATE_NAMES}
    return GateLimits(**limits, severities=tuple(sorted(severities.items())))


def _hashed_gates(gates: GateLimits) -> dict[str, Any]:
    """The gates as the spec hash sees them: settings added later count only when set, so
    every track that leaves them alone keeps its hash."""
    hashed = asdict(gates)
    if gates.tempo_tolerance_pct == GateLimits.tempo_tolerance_pct:
        del hashed["tempo_tolerance_pct"]
    if not gates.severities:
        del hashed["severities"]
    return hashed


_OFF_BY_NULL = frozenset({"stems", "reference"})  # what a track's null turns off


def _merge(defaults: Defaults, track: Track) -> dict[str, Any]:
    # exclude_unset: a track's `sampling: {top_k: 100}` must not reset the soundtrack's temperature.
    merged = defaults.model_dump(exclude_unset=True, exclude_none=True)
    # A track's `null` turns off what the defaults turn on for it; elsewhere it is an empty key
    # (`duration:`), which keeps the defaults' value, as it always did.
    for name in _OFF_BY_NULL & track.model_fields_set:
        if getattr(track, name) is None:
            merged.pop(name, None)
    for name, value in track.model_dump(exclude_unset=True, exclude_none=True).items():
        if name == "gates" and name in merged:
            merged[name] = {**merged[name], **value}
        elif name != "sampling":
            merged[name] = value
    # Sampling merges per family; the flat form is MusicGen's block.
    d_blocks, _ = _sampling_blocks(merged.pop("sampling", {}))
    t_blocks, t_flat = _sampling_blocks(track.model_dump(exclude_unset=True).get("sampling") or {})
    merged["sampling"] = {
        family: {**d_blocks.get(family, {}), **t_blocks.get(family, {})}
        for family in (*d_blocks, *t_blocks)
    }
    # The defaults' flat form is MusicGen's block, which tracks of other families ignore; a
    # track's own flat `sampling` is held to its model's family (catalog.limit_problems).
    merged["sampling_flat"] = t_flat
    return merged


def _sampling_blocks(value: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], bool]:
    """A dumped `sampling` as blocks per family, and whether it was the flat (MusicGen) form."""
    value = {k: v for k, v in value.items() if v is not None}
    if value and set(value) <= {"musicgen", "ace_step", "stable_audio"}:
        return {k: {n: x for n, x in v.items() if x is not None} for k, v in value.items()}, False
    return ({"musicgen": value} if value else {}), bool(value)


def _loudness_target(value: Any) -> LoudnessTarget:
    if value is None:
        return LOUDNESS_PROFILES[DEFAULT_LOUDNESS_PROFILE]
    if isinstance(value, str):
        return LOUDNESS_PROFILES[value]
    explicit = LoudnessSpec(**value)
    return LoudnessTarget(
        integrated_lufs=explicit.integrated,
        true_peak_max_dbtp=explicit.true_peak,
        tolerance_lu=explicit.tolerance,
    )


def _canonical_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_tracks(
    manifest: Manifest,
    base_dir: Path,
    *,
    model_override: str | None = None,
    severities: Mapping[str, str] | None = None,
) -> list[TrackSpec]:
    """Merge defaults into every track and compute its spec hash (see docs/manifest.md).

    `model_override` replaces every generated track's model (e.g. a tiny model for smoke tests);
    `severities` (gate -> fail, warn or off) override every track's, as `build --gate` does.
    """
    specs = []
    families: dict[str, str | None] = {}  # model location -> its keyed family, read once
    expectations = (base_dir / manifest.expectations).resolve() if manifest.expectations else None
    expectations_sha256 = file_sha256(expectations) if expectations else None
    for track in manifest.tracks:
        merged = _merge(manifest.defaults, track)
        if model_override is not None:
            merged["model"] = model_override
            merged.pop("model_revision", None)  # a pin of the manifest's model, not of this one
        source = (base_dir / track.source).resolve() if track.source else None
        duration_s = _duration_s(
            track, merged, None if source is None else _recording(source).duration_s
        )
        gates = _gate_limits({**merged.get("gates", {}), **(severities or {})})
        mastering = _mastering(merged, duration_s, loop=track.loop)
        model = None if source else merged.get("model", DEFAULT_MODEL)
        blocks = merged["sampling"]
        location = _model_location(model, base_dir)
        if model is not None and location not in families:
            families[location] = keyed_family(location)
        family = families.get(location)
        if family is not None:
            # Only its own family's block shapes a render: another's must not re-render it.
            blocks = {name: b for name, b in blocks.items() if name == family.replace("-", "_")}
        # The hashed fields: their names and values are the spec hash, so neither may change.
        fields: dict[str, Any] = {
            "pipeline_version": PIPELINE_VERSION,
            "soundtrack": manifest.soundtrack,
            "id": track.id,
            "prompt": full_prompt(track),
            "source_sha256": file_sha256(source) if source else None,
            "model": model,
            "model_revision": None if source else merged.get("model_revision"),
            "duration_s": float(duration_s),
            "loop": track.loop,
            "seed": track.seed
            if track.seed is not None
            else derived_seed(manifest.soundtrack, track.id),
            "sampling": asdict(Sampling(**blocks.get("musicgen", {}))),
            "overlap_s": float(merged.get("overlap_s", 10.0)),
            "mastering": asdict(mastering),
            "gates": _hashed_gates(gates),
            "formats": list(merged.get("formats", ["ogg", "mp3"])),
            "wav_bit_depth": merged.get("wav_bit_depth", 16),
            "expectations_sha256": expectations_sha256,
        }
        ace_step_sampling = blocks.get("ace_step")
        if ace_step_sampling:
            # Only when set, as for lyrics below.
            fields["ace_step_sampling"] = ace_step_sampling
        stable_audio_sampling = blocks.get("stable_audio")
        if stable_audio_sampling:
            fields["stable_audio_sampling"] = stable_audio_sampling  # only when set, as above
        if track.lyrics is not None:
            # Only when set: every track without lyrics keeps the hash it had before they existed.
            fields["lyrics"] = track.lyrics
        if track.negative_prompt is not None:
            fields["negative_prompt"] = track.negative_prompt  # only when set, as lyrics
        bar_s = bar_seconds(track.bpm, track.time_signature) if track.bpm else None
        if track.loop and bar_s is not None:
            fields["bar_loop"] = True  # cut on whole bars: a new master, so a new hash
        if track.bars is not None:
            fields["bars"] = track.bars  # only when set, as lyrics
        if source is not None:
            # A recording has no prompt to carry its musical targets: they join the hash
            # themselves (judged by the tempo and key gates, written to its sidecar).
            targets = {"bpm": track.bpm, "key": track.key, "time_signature": track.time_signature}
            if any(value is not None for value in targets.values()):
                fields["targets"] = targets
        reference = (base_dir / merged["reference"]).resolve() if "reference" in merged else None
        if track.variation_of is not None:
            # The parent's audio joins the hash once it is approved (with_parent).
            fields["variation_of"] = track.variation_of
        stems = tuple(merged.get("stems", ()))
        stem_model = _stem_model(merged.get("stem_model"), base_dir)
        if stems:
            fields["stems"] = list(stems)  # only when set, as lyrics
            fields["stem_model"] = merged.get("stem_model")
        spec = TrackSpec(
            soundtrack=manifest.soundtrack,
            id=track.id,
            duration_s=fields["duration_s"],
            render_duration_s=seconds_to_render(
                fields["duration_s"], mastering, loop=track.loop, bar_s=bar_s
            ),
            loop=track.loop,
            seed=fields["seed"],
            model=location,
            model_revision=fields["model_revision"],
            sampling=Sampling(**fields["sampling"]),
            overlap_s=fields["overlap_s"],
            mastering=mastering,
            gates=gates,
            formats=tuple(fields["formats"]),
            wav_bit_depth=fields["wav_bit_depth"],
            spec_hash=_canonical_hash(fields),
            prompt=fields["prompt"],
            source=source,
            source_sha256=fields["source_sha256"],
            own_length=source is not None and track.duration is None and track.bars is None,
            expectations=expectations,
            expectations_sha256=expectations_sha256,
            bpm=track.bpm,
            key=track.key,
            time_signature=track.time_signature,
            lyrics=track.lyrics,
            negative_prompt=track.negative_prompt,
            ace_step_sampling=AceStepSampling(**ace_step_sampling) if ace_step_sampling else None,
            stable_audio_sampling=StableAudioSampling(**stable_audio_sampling)
            if stable_audio_sampling
            else None,
            sampling_flat=merged["sampling_flat"],
            plain_prompt=full_prompt(track, musical_tags=False),
            bars=track.bars,
            # A recording is what it is: the defaults' re-rolls are for what is generated.
            attempts=1 if source else merged.get("attempts", 1),
            reference=reference,
            reference_sha256=None if reference is None else _reference_sha256(reference),
            variation_of=track.variation_of,
            stems=stems,
            stem_model=stem_model if stems else None,
        )
        if source is None:
            extra = [
                name
                for name in (
                    "lyrics",
                    "ace_step_sampling",
                    "negative_prompt",
                    "stable_audio_sampling",
                    "variation_of",
                )
                if name in fields
            ]
            generation = {name: fields[name] for name in (*_GENERATION_FIELDS, *extra)}
            # Still under its old name, so renders cached before the two versions split keep
            # their keys: a mastering change must not re-render.
            generation["pipeline_version"] = RENDER_VERSION
            generation["render_duration_s"] = spec.render_duration_s
            spec = replace(spec, generation_key=_canonical_hash(generation))
        specs.append(spec)
    return specs


def with_parent(spec: TrackSpec, parent: ParentAudio) -> TrackSpec:
    """A variation once its parent is approved: rendered from the parent's audio, whose sha256
    joins its spec hash and generation key (a parent whose audio changed re-renders it; one
    published anew with the same audio, other tags or gates, does not)."""
    if spec.generation_key is None:
        raise ValueError(f"track {spec.id!r} is a recording; it has no parent")
    return replace(
        spec,
        parent_audio=parent,
        spec_hash=_canonical_hash({"spec_hash": spec.spec_hash, "parent": parent.identity}),
        generation_key=_canonical_hash(
            {"generation_key": spec.generation_key, "parent": parent.identity}
        ),
    )


def take(spec: TrackSpec, number: int) -> TrackSpec:
    """Take `number` of a track (0 is the spec itself; `spec` may be any take): the same spec,
    rendered with seed + `number` under a generation key of its own; the lock records which
    take passed."""
    if spec.generation_key is None or number == spec.take:
        return spec
    first = spec.take_of or spec.generation_key
    seed = (spec.seed - spec.take + number) % (SEED_MAX + 1)
    if number == 0:
        return replace(spec, seed=seed, take=0, generation_key=first, take_of=None)
    key = _canonical_hash({"generation_key": first, "take": number})
    return replace(spec, seed=seed, take=number, generation_key=key, take_of=first)


def _duration_s(track: Track, merged: dict[str, Any], recording_s: float | None) -> float:
    """A recording keeps its own length unless the track itself asks for another: the
    soundtrack-wide default duration is meant for what gets generated."""
    if track.bars is not None and track.bpm is not None:
        return track.bars * bar_seconds(track.bpm, track.time_signature)
    if recording_s is None:
        return float(merged.get("duration", 30.0))
    return float(track.duration) if track.duration is not None else recording_s


def _mastering(merged: dict[str, Any], duration_s: float, *, loop: bool) -> Mastering:
    """The track's mastering settings, with the length-dependent defaults resolved."""
    settings = {name: merged[name] for name in _MASTERING_FIELDS if name in merged}
    # A loop has no fade-out: it keeps the dataclass default, so its spec hash stays put.
    if not loop and "fade_out_s" not in settings:
        settings["fade_out_s"] = default_fade_out_s(duration_s)
    return Mastering(loudness=_loudness_target(merged.get("loudness")), **settings)


def render_problems(manifest: Manifest, base_dir: Path) -> list[tuple[str, str]]:
    """(field, message) for settings that are each in range but cannot be rendered together
    (mastering and loops would raise half-way through a build), and for source recordings
    mastering cannot take."""
    problems: list[tuple[str, str]] = []
    for index, track in enumerate(manifest.tracks):
        where = f"tracks[{index}]"
        merged = _merge(manifest.defaults, track)
        recording = None
        if track.source is not None:
            try:
                recording = _recording((base_dir / track.source).resolve())
            except InputError as exc:
                problems.append((f"{where}.source", str(exc)))
                continue
        if track.loop and recording is not None and (problem := _own_loop(recording)):
            problems.append((f"{where}.source", f"{track.source} {problem}"))
            continue
        duration_s = _duration_s(track, merged, recording.duration_s if recording else None)
        if track.bars is not None and not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:
            problems.append(
                (
                    f"{where}.bars",
                    f"{track.bars} bar{'' if track.bars == 1 else 's'} at {track.bpm} BPM: "
                    f"{duration_s:g} s; a track is {MIN_DURATION_S:g} to {MAX_DURATION_S:g} s "
                    "long",
                )
            )
            continue
        mastering = _mastering(merged, duration_s, loop=track.loop)
        gates = _gate_limits(merged.get("gates", {}))
        found = _unrenderable(track, merged, duration_s, mastering, recording, gates)
        for name, message in [
            *found,
            *_stem_problems(merged),
            *_reference_problems(merged, base_dir),
        ]:
            origin = (
                " (set in defaults)"
                if name in merged and name not in track.model_fields_set
                else ""
            )
            problems.append((f"{where}.{name}", message + origin))
    return problems


def _unrenderable(
    track: Track,
    merged: dict[str, Any],
    duration_s: float,
    mastering: Mastering,
    recording: _Recording | None,
    gates: GateLimits,
) -> list[tuple[str, str]]:
    """(field, message) for each render-time check of master.py, loops.py and the seam's
    measure this track would fail, and a recording the duration gate would reject; the checks
    are theirs, done in samples at the output rate as they do them."""
    tolerance_s = gates.duration_tolerance_s
    judged = gates.severity("duration") in (None, "fail")  # warn or off: a shorter take is taken
    sample_rate = mastering.sample_rate
    frames = round(duration_s * sample_rate)
    length = "bars" if track.bars is not None else "duration"  # the field the length is from
    if recording is not None:  # mastering cuts a recording to the duration, never lengthens it
        frames = min(frames, round(recording.duration_s * sample_rate))
        if not track.loop and judged and recording.duration_s < duration_s - tolerance_s:
            return [
                (
                    length,
                    f"the recording is {recording.duration_s:.2f} s long and mastering never "
                    f"lengthens one: {duration_s:g} s asked would fail the duration gate "
                    f"(± {tolerance_s:g} s); leave {length} out to keep the recording's length",
                )
            ]
    if track.loop and duration_s < SHORTEST_LOOP_S:
        # measure._short_term_width: the seam's loudness compares two blocks, end and start
        return [
            (
                length,
                f"a {duration_s:g} s loop is too short to judge its seam: a loop is at least "
                f"{SHORTEST_LOOP_S:g} s (two {BLOCK_S:g} s loudness blocks, its end and its "
                "start)",
            )
        ]
    if not track.loop:
        # master._fade: the fades must fit the (cut) audio
        fade_in_frames = round(mastering.fade_in_ms / 1000.0 * sample_rate)
        fade_out_frames = round(mastering.fade_out_s * sample_rate)
        if fade_in_frames + fade_out_frames <= frames:
            return []
        name = next((n for n in ("fade_out_s", "fade_in_ms") if n in merged), "duration")
        return [
            (
                name,
                f"a {mastering.fade_in_ms:g} ms fade-in plus a {mastering.fade_out_s:g} s "
                f"fade-out does not fit the {frames / sample_rate:g} s track; allowed: "
                f"fade_in_ms / 1000 + fade_out_s <= duration",
            )
        ]
    # loops.find_loop_end: the crossfade must fit twice before the earliest end, and the loop's
    # tail must follow the latest. A generated loop renders room for both; a recording may not.
    crossfade_ms = mastering.loop_crossfade_ms
    crossfade_frames = round(crossfade_ms / 1000.0 * sample_rate)
    available_s = recording.duration_s if recording else render_duration_s(duration_s, crossfade_ms)
    earliest_end, latest_end = loop_end_range(
        duration_s, sample_rate, round(available_s * sample_rate), crossfade_frames
    )
    if 2 * crossfade_frames > earliest_end:  # only a crossfade over SHORTEST_LOOP_S / 2
        return [
            (
                "loop_crossfade_ms",
                f"a {duration_s:g} s loop is too short for its {crossfade_ms:g} ms crossfade: "
                f"a loop needs at least {SEARCH_S:g} s (the search for its end) + 2 x the "
                f"crossfade = {shortest_loop_s(crossfade_ms):g} s",
            )
        ]
    if recording is None or latest_end >= earliest_end:
        return []
    name = length if track.duration is not None or track.bars is not None else "loop_crossfade_ms"
    earliest_s = earliest_end / sample_rate
    needed_s = earliest_s + loop_tail_samples(crossfade_frames) / sample_rate
    return [
        (
            name,
            f"the recording is {recording.duration_s:.2f} s long; a {duration_s:g} s loop with a "
            f"{crossfade_ms:g} ms crossfade needs at least {needed_s:.2f} s of audio (its end "
            f"is searched from {earliest_s:.2f} s, {SEARCH_S:g} s before the duration or "
            f"{SHORTEST_LOOP_S:g} s, and the crossfade follows it)",
        )
    ]


def _stem_model(stem_model: str | None, base_dir: Path) -> str | None:
    """A separator's directory relative to the manifest, resolved; a registered name as given."""
    from soundtrack.separate import SEPARATORS

    if stem_model is None or stem_model in SEPARATORS:
        return stem_model
    return str((base_dir / stem_model).resolve())


def _reference_problems(merged: dict[str, Any], base_dir: Path) -> list[tuple[str, str]]:
    """A reference is read only after the track has rendered: a file that is no audio must be
    found now, not after the GPU's work."""
    if "reference" not in merged:
        return []
    import soundfile  # local: only tracks with a reference need it

    try:
        info = soundfile.info(str((base_dir / merged["reference"]).resolve()))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        return [("reference", f"cannot read the reference recording: {exc}")]
    if info.frames <= 0:
        return [("reference", "the reference recording has no audio")]
    if info.frames / info.samplerate < MIN_DURATION_S:
        seconds = info.frames / info.samplerate
        return [
            (
                "reference",
                f"the reference recording lasts {seconds:.2f} s; the comparison needs "
                f"{MIN_DURATION_S:g} s at least",
            )
        ]
    return []


def _stem_problems(merged: dict[str, Any]) -> list[tuple[str, str]]:
    """Stems need a separation model (whether its files are at hand, build checks, as it does
    a generator's weights)."""
    if merged.get("stems") and not merged.get("stem_model"):
        return [("stems", "needs stem_model: the separation model's directory")]
    return []


def _model_location(model: str | None, base_dir: Path) -> str:
    """A model directory relative to the manifest loads from there; anything else is a hub id."""
    if model is None:
        return ""
    local = base_dir / user_path(model)  # an absolute path stays as it is
    return str(local.resolve()) if is_local(model, base=base_dir) else model


@dataclass(frozen=True)
class _Recording:
    """What validation needs to know of a source recording (read from its header)."""

    duration_s: float
    channels: int
    frames: int
    path: Path


def _own_loop(recording: _Recording) -> str | None:
    """Why a looping track cannot take the recording's own loop points, or None: a build cuts
    its own loop, and would drop them without a word (a one-shot has no use for them)."""
    from soundtrack.measure import read_loop_tags

    try:
        loop = read_loop_tags(recording.path, recording.frames)
    except AudioError as exc:
        said = str(exc).removeprefix(f"{recording.path}: ")
        return f"has loop points that cannot be read: {said}"
    if loop is None:
        return None
    start, length = loop
    if start == 0 and length >= recording.frames:
        return None  # the whole file (tags a resampled or trimmed copy kept): what a build keeps
    if length <= 0:
        return f"has a loop that ends before it starts (from frame {start}): remove it"
    if start + length > recording.frames:
        return (
            f"has loop points outside its {recording.frames} frames (from frame {start}, "
            f"{length} frames long): remove them"
        )
    return (
        f"carries its own loop (from frame {start}, {length} frames long), which a build does "
        "not keep: a loop track's loop is cut by the build. Remove the file's loop points to let "
        "it cut one, or set loop: false for a one-shot"
    )


def _recording(path: Path) -> _Recording:
    """Read a source recording's header; raise InputError for one that mastering cannot take."""
    import soundfile  # local: only source tracks need it

    from soundtrack.audio import cut_short

    try:
        info = soundfile.info(os.fsencode(path))  # bytes: a folder's name may not be UTF-8
    except soundfile.LibsndfileError as exc:  # its str repeats the path, as bytes
        raise InputError(
            f"cannot read the source recording {path.name}: {exc.error_string}"
        ) from None
    except RuntimeError as exc:
        raise InputError(f"cannot read the source recording {path.name}: {exc}") from None
    if problem := cut_short(path, info.format, info.extra_info):
        raise InputError(f"source recording {problem}")
    frames = info.frames
    if info.format == "MP3":  # its header's length may be a guess (audio.read_audio): count
        stat = path.stat()
        if stat.st_size > MAX_MP3_BYTES:
            raise InputError(
                f"source recording {path.name} is {stat.st_size / 2**20:.0f} MiB; an MP3 of at "
                f"most {MAX_DURATION_S:g} s at its highest bitrate (320 kbit/s) is 24 MB"
            )
        frames = _decoded_frames(path, stat.st_mtime_ns, stat.st_size)
    duration_s = float(frames) / float(info.samplerate)
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise InputError(f"source recording {path.name} has no audio")
    if info.channels > MAX_SOURCE_CHANNELS:
        raise InputError(
            f"source recording {path.name} has {info.channels} channels; mastering takes mono "
            f"(1) or stereo (2) recordings: downmix it first"
        )
    if duration_s > MAX_DURATION_S:
        raise InputError(
            f"source recording {path.name} is {duration_s:.1f} s long; "
            f"the longest track is {MAX_DURATION_S:g} s"
        )
    if duration_s < MIN_DURATION_S:
        raise InputError(
            f"source recording {path.name} is {duration_s:.3f} s long; "
            f"the shortest track is {MIN_DURATION_S:g} s"
        )
    stat = path.stat()
    # Only floating-point samples can be NaN or infinite; mastering fails on them mid-build.
    try:
        non_finite = info.subtype in ("FLOAT", "DOUBLE") and _non_finite(
            path, stat.st_mtime_ns, stat.st_size
        )
    except RuntimeError as exc:  # libsndfile, on a block it cannot read
        said = getattr(exc, "error_string", exc)  # LibsndfileError's str repeats the path
        raise InputError(f"cannot read the source recording {path.name}: {said}") from None
    if non_finite:
        raise InputError(f"source recording {path.name} contains NaN or infinite samples")
    return _Recording(
        duration_s=duration_s, channels=int(info.channels), frames=int(frames), path=path
    )


def _reference_sha256(path: Path) -> str:
    """A reference recording's sha256, once per file and version in this process: a defaults'
    reference is every track's."""
    stat = path.stat()
    return _sha256_of_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: Path, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


@functools.lru_cache(maxsize=64)
def _non_finite(path: Path, mtime_ns: int, size: int) -> bool:
    """Whether a recording holds a NaN or infinite sample, read a block at a time, once per
    file and version in this process."""
    import numpy as np
    import soundfile

    with soundfile.SoundFile(os.fsencode(path)) as recording:
        blocks = recording.blocks(blocksize=1 << 16, dtype="float32", always_2d=True)
        return not all(np.isfinite(block).all() for block in blocks)


@functools.lru_cache(maxsize=64)
def _decoded_frames(path: Path, mtime_ns: int, size: int) -> int:
    """A recording's length in frames as decoded, once per file and version in this process."""
    from soundtrack.audio import read_audio

    try:
        return int(read_audio(path)[0].shape[1])
    except AudioError as exc:
        raise InputError(f"cannot read the source recording {path.name}: {exc}") from None
