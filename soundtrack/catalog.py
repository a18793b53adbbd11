"""What each model family can render, and the known checkpoints: read by `validate` with no
weights, no network and no torch (the families' backends load only when a build renders)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from soundtrack.paths import user_path
from soundtrack.schema import SAMPLING_FAMILIES
from soundtrack.spec import TrackSpec


@dataclass(frozen=True)
class Family:
    """One kind of model: its limits per call, native output and the inputs it takes."""

    name: str
    max_call_s: float | None  # longest render of one call; None: long form continues in windows
    min_render_s: float  # a shorter track renders this long and is cut to its own length
    sample_rate_hz: int
    channels: tuple[int, ...]  # the checkpoints' choices
    # Musical targets it takes as inputs, not as prompt words; source_audio: a recording to
    # render from (a variation's parent).
    conditioning: frozenset[str]


FAMILIES: dict[str, Family] = {
    "musicgen": Family("musicgen", None, 0.0, 32000, (1, 2), frozenset()),
    "ace-step": Family(
        "ace-step",
        600.0,
        10.0,
        48000,
        (2,),
        frozenset({"bpm", "key", "time_signature", "lyrics", "source_audio"}),
    ),
    # Declared for validation; validate names a family with no backend in BACKENDS (issue 14).
    "stable-audio": Family("stable-audio", 47.0, 0.0, 44100, (2,), frozenset({"negative_prompt"})),
    "bark": Family("bark", 14.0, 0.0, 24000, (1,), frozenset({"lyrics"})),
}


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint known without its files: its family and its weights' licence."""

    family: str
    licence: str


CHECKPOINTS: dict[str, Checkpoint] = {
    **{
        f"facebook/musicgen-{size}": Checkpoint("musicgen", "CC-BY-NC-4.0")
        for size in ("small", "medium", "large", "stereo-small", "stereo-medium", "stereo-large")
    },
    # Known for their licence; no backend (docs/generation.md: melody conditioning).
    **{
        f"facebook/musicgen-{size}": Checkpoint("musicgen-melody", "CC-BY-NC-4.0")
        for size in ("melody", "melody-large")
    },
    "stabilityai/stable-audio-open-1.0": Checkpoint("stable-audio", "stabilityai-community"),
    **{
        f"ACE-Step/acestep-v15-{size}{variant}-diffusers": Checkpoint("ace-step", "MIT")
        for size in ("", "xl-")
        for variant in ("turbo", "base", "sft")
    },
    "suno/bark": Checkpoint("bark", "MIT"),
    "suno/bark-small": Checkpoint("bark", "MIT"),
}
# The hub finds a repository whatever the case of its id.
_KNOWN = {model.casefold(): checkpoint for model, checkpoint in CHECKPOINTS.items()}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def known_checkpoint(model: str) -> Checkpoint | None:
    """The table's entry for hub id `model`, in any case; None for anything else."""
    return _KNOWN.get(model.casefold()) if is_hub_id(model) else None


def is_hub_id(model: str) -> bool:
    """Whether `model` can name a hub repository, by the hub's own rules: a path (/, ., ~)
    never does, nor `org/name-`, `a--b`, `x.git` or a name over 96 characters."""
    if model.startswith(("/", ".", "~")) or _HUB_ID.match(model) is None:
        return False
    # Imported here: only what looks like an id needs it. The documented import, which the
    # package exports lazily (so mypy cannot see it).
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def is_local(model: str, *, base: Path | None = None) -> bool:
    """Whether `model` means local files. As written (relative to `base`): something there, or a
    path that can name no hub repository. As resolved (no `base`): a path, never the cwd's."""
    if base is None:
        return not is_hub_id(model)  # a folder was resolved to its absolute path at the boundary
    return (base / user_path(model)).exists() or not is_hub_id(model)


def family_name(model: str, revision: str | None = None) -> str | None:
    """The family of a local folder or a hub id in the Hugging Face cache, read from its files as
    a build reads them, else of a known checkpoint; None when nothing at hand says. ModelLoadError
    when the files name no family this version loads."""
    from soundtrack.models.source import check_pin, check_weights, model_family

    local = user_path(model)
    if is_local(model):
        family = model_family(local, model)
        check_weights(local, model)
        if revision is not None:  # hashing a folder's weights costs seconds: only for a pin
            check_pin(local, revision, model)
        return family
    known = known_checkpoint(model)
    if known is not None:
        return known.family
    for name in ("model_index.json", "config.json"):
        found = cached_file(model, name, revision)
        if found is not None and found.is_file():
            return model_family(found.parent, model)
    return None


def keyed_family(model: str) -> str | None:
    """The family a track's keys are made for: a local folder's own files, else the known
    checkpoints' table; None for anything else (a hub id either does not know, a folder that
    names no family), whose keys then hold every family's settings. Never the hub cache: a key
    must not change once a download lands."""
    from soundtrack.errors import ModelLoadError
    from soundtrack.models.source import model_family

    if is_local(model):
        try:
            return model_family(user_path(model), model)
        except ModelLoadError:  # validate names the problem
            return None
    known = known_checkpoint(model)
    return known.family if known else None


def cached_file(model: str, name: str, revision: str | None) -> Path | None:
    """File `name` of hub id `model` in the Hugging Face cache; never asks the network."""
    if not is_hub_id(model):
        return None
    # Imported here: only a hub id needs it.
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(model, name, revision=revision)
    return Path(path) if isinstance(path, str) else None


def untaken(family: Family, given: Mapping[str, object]) -> list[tuple[str, str]]:
    """The inputs of `given` (name: value, None when absent) that `family`'s models do not
    take, each with why and the families that do."""
    problems = []
    for name, value in given.items():
        if value is not None and name not in family.conditioning:
            takers = sorted(f.name for f in FAMILIES.values() if name in f.conditioning)
            problems.append(
                (name, f"{family.name} models take no {name} ({name}: {', '.join(takers)})")
            )
    return problems


def _longest_loop(spec: TrackSpec, max_call_s: float) -> str:
    """The longest loop like `spec` whose render fits in `max_call_s` seconds, in words."""
    from soundtrack.loops import SLOWEST_BAR_RATIO, bar_loop_s, shortest_loop_s  # light

    # A bar loop's room holds its whole bars at as slow a tempo as the tempo gate allows
    # (resolve.seconds_to_render): its render grows that much faster than they do.
    growth, length_s = 1.0, spec.duration_s
    if spec.bar_loop:
        assert spec.bpm is not None
        bar_s = spec.bar_s(spec.bpm)
        growth = SLOWEST_BAR_RATIO
        length_s = bar_loop_s(spec.duration_s, bar_s)
    # A hair over, so a length whose render is exactly the limit is not floored a step short.
    fits_s = length_s - (spec.render_duration_s - max_call_s) / growth + 1e-9
    shortest_s = shortest_loop_s(spec.mastering.loop_crossfade_ms)
    if spec.bar_loop:
        bars = math.floor(fits_s / bar_s)
        if bars < 1 or bars * bar_s < shortest_s:
            return f"no loop of whole {bar_s:g} s bars at {spec.bpm:g} bpm fits"
        counted = f"{bars} bar{'' if bars == 1 else 's'}"
        if spec.bars:
            return f"a loop of at most {counted} fits"
        # It is cut to the whole bars nearest its duration (and rendered for them).
        return f"a loop of at most {counted}, {math.floor(bars * bar_s * 1000) / 1000:g} s, fits"
    if fits_s < shortest_s:
        return "no loop fits"
    return f"a loop of at most {math.floor(fits_s * 10) / 10:g} s fits"


def limit_problems(spec: TrackSpec, family: str) -> list[tuple[str, str]]:
    """What of `spec` its model's family cannot render, or this version cannot load: (field,
    problem) pairs."""
    from soundtrack.models import BACKENDS  # the backends' table; it imports no model code

    no_backend = (
        f"{family} models have no backend in this version (backends: {', '.join(sorted(BACKENDS))})"
    )
    known = FAMILIES.get(family)
    if known is None:
        return [("model", no_backend)]
    problems = []
    # A loop renders longer than it plays (room to find its end): the render must fit.
    if known.max_call_s is not None and spec.render_duration_s > known.max_call_s:
        extra = ""
        if spec.render_duration_s > spec.duration_s:
            room = f"{spec.render_duration_s:.1f} s; {_longest_loop(spec, known.max_call_s)}"
            extra = f" with the room a loop renders to find its seam ({room})"
        problems.append(
            (
                "bars" if spec.bars else "duration",
                f"duration {spec.duration_s:g} s{extra} is longer than {family} models render "
                f"({known.max_call_s:g} s at most)",
            )
        )
    if spec.sampling_flat and family != "musicgen":
        own = (
            f"{family} models take their own block (sampling: {{{family}: {{...}}}})"
            if family in SAMPLING_FAMILIES
            else f"{family} models take no sampling settings"
        )
        problems.append(
            ("sampling", f"`sampling` in the flat form holds MusicGen's settings; {own}")
        )
    given = {"lyrics": spec.lyrics, "negative_prompt": spec.negative_prompt}
    problems += untaken(known, given)
    guidance = spec.stable_audio_sampling.guidance if spec.stable_audio_sampling else None
    if family == "stable-audio" and spec.negative_prompt and guidance is not None and guidance <= 1:
        problems.append(
            (
                "negative_prompt",
                f"negative_prompt needs guidance above 1 (sampling.stable-audio.guidance is "
                f"{guidance:g}): without classifier-free guidance Stable Audio ignores it",
            )
        )
    if spec.variation_of is not None and "source_audio" not in known.conditioning:
        takers = sorted(f.name for f in FAMILIES.values() if "source_audio" in f.conditioning)
        problems.append(
            (
                "variation_of",
                f"variation_of {spec.variation_of!r}: {family} models take no source recording "
                f"to render from (variations: {', '.join(takers)})",
            )
        )
    if family not in BACKENDS:
        problems.append(("model", no_backend))
    return problems
