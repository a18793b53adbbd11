"""The manifest's schema: pydantic models of schema version 1, and the JSON Schema they produce.

Every key and range a manifest may hold is declared here once; docs/manifest.md is the reference.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from soundtrack.formats import AudioFormat
from soundtrack.keys import KEY_PATTERN, parse_key
from soundtrack.paths import path_problem, shown
from soundtrack.storage import check_storage_url

SCHEMA_VERSION = 1
MAX_DURATION_S = 600.0  # 10 minutes: longer than any game cue, short enough to bound GPU time
# One BS.1770 gating block: mastering refuses anything shorter. Copied from
# soundtrack.master._MIN_DURATION_S (importing master costs scipy's import time); a test keeps
# the two equal.
MIN_DURATION_S = 0.4
MAX_TRACKS = 500
MAX_PROMPT_CHARS = 1000
SEED_MAX = 2**32 - 1
MAX_ATTEMPTS = 10
MAX_BARS = 1024
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
TIME_SIGNATURE_PATTERN = r"^([1-9]|1[0-6])/(1|2|4|8|16)$"
# What a value matching each pattern looks like, in words, for error messages.
PATTERN_WORDS = {
    SLUG_PATTERN: "use 1-64 lower-case letters, digits and '-', with no '-' at either end",
    TIME_SIGNATURE_PATTERN: "write beats/note value, such as 4/4, 3/4 or 6/8 (1-16 beats; a "
    "note value of 1, 2, 4, 8 or 16)",
}
DEFAULT_STORAGE = "./assets"

StemName = Literal["drums", "bass", "vocals", "other"]
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, description="Lower-case letters, digits, '-'.")]
# A file of one of these names (with any extension) cannot be opened on Windows.
WINDOWS_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul", *(f"{port}{n}" for port in ("com", "lpt") for n in range(10))}
)


def _admits(annotation: Any, kind: type) -> bool:
    """Whether a field's type admits values of exactly `kind` (through unions and Literals)."""
    if annotation is kind:
        return True
    if get_origin(annotation) is Literal:
        return any(type(arg) is kind for arg in get_args(annotation))
    return any(_admits(arg, kind) for arg in get_args(annotation))


def visible(text: str) -> str:
    """`text` as a reader sees it: without format characters (zero-width spaces), stripped."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf").strip()


# Embeddings, overrides and isolates; the marks (U+200E, U+200F) reorder nothing around them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def text_problem(text: str) -> str | None:
    """Why `text` is no text the lock, the report and JUnit's XML can hold, or None."""
    if any(unicodedata.category(c) == "Cs" for c in text):
        return "contains a lone surrogate, which is not text"
    # C0, DEL and C1 (NEL, CSI: a terminal acts on them), as `unicodedata` counts them.
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return "contains control characters"
    if any(c in _BIDI_CONTROLS for c in text):
        # What follows shows reordered in a log or a terminal: text that reads as something else.
        return (
            "contains a bidirectional control (U+202A-U+202E, U+2066-U+2069): remove it (the "
            "marks U+200E, U+200F and U+061C are allowed)"
        )
    if "\u2028" in text or "\u2029" in text:
        return "contains a line or paragraph separator (U+2028, U+2029): use a newline"
    if "\ufffe" in text or "\uffff" in text:
        return "contains U+FFFE or U+FFFF, which are no characters (XML refuses them)"
    return None


# Text a model reads is refused blank or holding what text_problem refuses (Track._model_text);
# the schema says so to editors too, in classes Python's and JavaScript's regexes both read (a
# format character beyond U+FFFF, such as a tag character, passes there: validate refuses it).
_REFUSED = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufffe\uffff"
_FORMAT = (  # Unicode's format characters (Cf) up to U+FFFF: invisible
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
)
_VISIBLE = rf"[^\s{_FORMAT}]"
_NOT_BLANK: dict[str, Any] = {
    "allOf": [{"pattern": rf"^[^\x00-\x08\x0b-\x1f{_REFUSED}]*$"}, {"pattern": _VISIBLE}]
}
# A file's path, relative to the manifest (_file_inside says why not, in words).
_A_PATH: dict[str, Any] = {"minLength": 1, "pattern": r"^(?!\s*$)[^/~]"}
# An instrument joins the prompt as a name: no tab or newline either.
_A_NAME: dict[str, Any] = {
    "allOf": [{"pattern": rf"^[^\x00-\x1f{_REFUSED}]*$"}, {"pattern": _VISIBLE}]
}


class _Strict(BaseModel):
    # strict: a manifest's types are the JSON Schema's, so `duration: "5"`, `loop: "yes"` or
    # `loop: 1` are refused as an editor refuses them, not quietly read as 5.0 or true.
    # allow_inf_nan=False: `.inf` or `.nan` would silently switch a gate off (every comparison
    # with nan is false); no setting of a manifest has a use for them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _json_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        annotation = cls.model_fields[name].annotation if name else None
        if isinstance(value, bool) and (_admits(annotation, int) or _admits(annotation, float)):
            raise ValueError("expected a number, not a boolean")
        # JSON Schema counts 7.0 as an integer; strict pydantic would not.
        if isinstance(value, float) and value.is_integer() and not _admits(annotation, float):
            return int(value) if _admits(annotation, int) else value
        return value


class LoudnessSpec(_Strict):
    """Explicit loudness targets instead of a named profile."""

    integrated: float = Field(ge=-40, le=-5, description="Integrated loudness target, LUFS.")
    true_peak: float = Field(default=-1.0, ge=-12, le=0, description="True-peak ceiling, dBTP.")
    tolerance: float = Field(default=2.0, gt=0, le=6, description="Allowed deviation, LU.")

    @model_validator(mode="after")
    def _reachable(self) -> LoudnessSpec:
        # A signal's loudness never exceeds its peak (a full-scale sine: -3 LUFS, 0 dBTP).
        if self.true_peak < self.integrated:
            raise ValueError(
                f"no audio is {self.integrated:g} LUFS loud with its true peak at "
                f"{self.true_peak:g} dBTP: true_peak must be at or above integrated"
            )
        return self


def _loudness_kind(value: Any) -> str:
    return "profile" if isinstance(value, str) else "explicit"


Loudness = Annotated[
    Annotated[Literal["console", "mobile", "web"], Tag("profile")]
    | Annotated[LoudnessSpec, Tag("explicit")],
    Discriminator(_loudness_kind),
]


class SamplingSpec(_Strict):
    """MusicGen sampling settings (audiocraft's defaults)."""

    temperature: float = Field(default=1.0, gt=0, le=5)
    top_k: int = Field(default=250, ge=0, le=2048, description="0 disables top-k.")
    top_p: float = Field(default=0.0, ge=0, le=1, description="0 disables nucleus sampling.")
    guidance: float = Field(default=3.0, ge=0, le=20, description="Classifier-free guidance.")


class AceStepSamplingSpec(_Strict):
    """ACE-Step settings; unset keys keep the checkpoint's (turbo: 8 steps, shift 3, no CFG)."""

    steps: int | None = Field(default=None, ge=1, le=200, description="Flow-matching steps.")
    # diffusers' scheduler is left no timesteps under about 1e-7: a traceback at the render.
    shift: float | None = Field(default=None, ge=0.1, le=10, description="Timestep shift.")
    guidance: float | None = Field(
        default=None, ge=1, le=20, description="Classifier-free guidance (1: none)."
    )


class StableAudioSamplingSpec(_Strict):
    """Stable Audio settings; unset keys keep the model card's (100 steps, guidance 7)."""

    steps: int | None = Field(default=None, ge=1, le=500, description="Denoising steps.")
    guidance: float | None = Field(
        default=None, ge=1, le=20, description="Classifier-free guidance (1: none)."
    )


class FamilySamplingSpec(_Strict):
    """Sampling settings per model family; each track uses its own model's block."""

    # `sampling: {}` is the flat form (nothing set): the schema's oneOf must not match it twice.
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    musicgen: SamplingSpec | None = None
    ace_step: AceStepSamplingSpec | None = Field(default=None, alias="ace-step")
    stable_audio: StableAudioSamplingSpec | None = Field(default=None, alias="stable-audio")


SAMPLING_FAMILIES = frozenset(f.alias or n for n, f in FamilySamplingSpec.model_fields.items())


_FLAT_SAMPLING = frozenset(f.alias or n for n, f in SamplingSpec.model_fields.items())


def _sampling_kind(value: Any) -> str:
    # A block (a mapping) or a family's name marks the per-family form, so a misspelt family is
    # reported among the families, not as a flat setting; a mapping under a flat setting's name
    # (temperature: {...}) is that setting's wrong value.
    if isinstance(value, dict) and (
        set(value) & SAMPLING_FAMILIES
        or any(
            isinstance(block, dict) and key not in _FLAT_SAMPLING for key, block in value.items()
        )
    ):
        return "families"
    if isinstance(value, FamilySamplingSpec):
        return "families"
    return "flat"


# The flat form is MusicGen's (the only family once); blocks per family name the family.
SamplingSettings = Annotated[
    Annotated[SamplingSpec, Tag("flat")] | Annotated[FamilySamplingSpec, Tag("families")],
    Discriminator(_sampling_kind),
]


GateSeverity = Literal["fail", "warn", "off"]


Severity = GateSeverity | None


class GatesSpec(_Strict):
    """Overrides of the quality gates' limits and severities (docs/gates.md); unset keys keep
    the defaults. A severity named for a gate also applies to its per-format checks."""

    duration_tolerance_s: float | None = Field(default=None, gt=0, le=60)
    silence_floor_lufs: float | None = Field(default=None, ge=-120, le=-20)
    dropout_max_s: float | None = Field(default=None, gt=0, le=60)
    dropout_threshold_dbfs: float | None = Field(default=None, ge=-120, le=-20)
    lead_silence_max_ms: float | None = Field(default=None, ge=0, le=10_000)
    trail_silence_max_s: float | None = Field(default=None, ge=0, le=60)
    clip_run_samples: int | None = Field(default=None, ge=1, le=1000)
    clipped_runs_max: int | None = Field(default=None, ge=0)
    dc_offset_max: float | None = Field(default=None, ge=0, le=1)
    seam_jump_max_ratio: float | None = Field(default=None, gt=0, le=1000)
    seam_loudness_max_lu: float | None = Field(default=None, gt=0, le=20)
    tempo_tolerance_pct: float | None = Field(
        default=None, gt=0, le=25, description="Tempo gate: allowed deviation from bpm, percent."
    )
    silence: Severity = None
    clipping: Severity = None
    dropout: Severity = None
    lead_silence: Severity = None
    trail_silence: Severity = None
    loudness: Severity = None
    true_peak: Severity = None
    dc_offset: Severity = None
    duration: Severity = None
    sample_rate: Severity = None
    channels: Severity = None
    loop_seam_jump: Severity = None
    loop_seam_loudness: Severity = None
    tempo: Severity = Field(default=None, description="Measured tempo vs bpm (default: fail).")
    key: Severity = Field(default=None, description="Measured key vs key (default: warn).")
    theme: Severity = Field(
        default=None, description="A variation's melody vs its parent's (default: fail)."
    )


_Item = TypeVar("_Item", bound=str)


def _unrepeated(value: list[_Item] | None, field: str) -> list[_Item] | None:
    """`value`, unless an item repeats: named once each (a list of thousands is not quoted)."""
    repeated = [item for item, count in Counter(value or []).items() if count > 1]
    if repeated:
        raise ValueError(f"{field} must not repeat {', '.join(repeated)}")
    return value


class _Overridable(_Strict):
    """Settings a soundtrack sets in `defaults` and a track may override."""

    model: str | None = Field(
        default=None,
        min_length=1,
        # model_problem's refusals an editor can tell: a space, a control or invisible character.
        json_schema_extra={"pattern": rf"^[^\s\x00-\x1f{_REFUSED}{_FORMAT}]+$"},
        description="Hub id or local directory.",
    )
    model_revision: str | None = Field(
        default=None, min_length=1, description="Hub revision (branch, tag or commit) to pin."
    )
    duration: float | None = Field(
        default=None, ge=MIN_DURATION_S, le=MAX_DURATION_S, description="Seconds."
    )
    formats: list[AudioFormat] | None = Field(
        default=None, min_length=1, json_schema_extra={"uniqueItems": True}
    )
    loudness: Loudness | None = Field(
        default=None, description="Profile (console -24, mobile -18, web -16 LUFS) or targets."
    )
    sampling: SamplingSettings | None = Field(
        default=None,
        description="MusicGen's settings, or one block per family: "
        "{musicgen: {...}, ace-step: {steps, shift, guidance}, stable-audio: {steps, guidance}}.",
    )
    overlap_s: float | None = Field(
        default=None, ge=1, le=25, description="Long form: seconds fed back to the next window."
    )
    sample_rate: Literal[22050, 32000, 44100, 48000] | None = None
    channels: Literal[1, 2] | None = None
    fade_in_ms: float | None = Field(default=None, ge=0, le=5000)
    fade_out_s: float | None = Field(default=None, ge=0, le=30, description="Non-loops only.")
    loop_crossfade_ms: float | None = Field(default=None, ge=10, le=5000)
    wav_bit_depth: Literal[16, 24] | None = None
    gates: GatesSpec | None = None
    attempts: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ATTEMPTS,
        description="Takes to try: a take a gate rejects is rendered again with the next seed "
        "(docs/generation.md#re-rolls). A build policy, not part of the spec hash.",
    )
    reference: str | None = Field(
        default=None,
        description="A recording to compare each render with in the report (not a gate), "
        "relative path. A track's null turns off the defaults' reference.",
        json_schema_extra=_A_PATH,
    )

    stems: list[StemName] | None = Field(
        default=None,
        json_schema_extra={"uniqueItems": True},
        description="Stems to separate the approved mix into and publish as <track>.<stem>.<ext> "
        "(vertical layering; docs/generation.md#stems-in-a-build). Needs stem_model. A track's "
        "[] or null turns off the defaults' stems.",
    )
    stem_model: str | None = Field(
        default=None,
        min_length=1,
        json_schema_extra={"pattern": r"^\S([\s\S]*\S)?$"},  # no space at either end
        description="The separation model: a local directory (`soundtrack models "
        "convert-demucs`), relative to the manifest, or absolute.",
    )

    @field_validator("stems")
    @classmethod
    def _unique_stems(cls, value: list[StemName] | None) -> list[StemName] | None:
        return _unrepeated(value, "stems")

    @field_validator("reference")
    @classmethod
    def _reference_inside(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _file_inside(value, info, "reference")

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, value: list[AudioFormat] | None) -> list[AudioFormat] | None:
        return _unrepeated(value, "formats")

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str | None) -> str | None:
        if value is not None and (problem := model_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("stem_model")
    @classmethod
    def _stem_model_path(cls, value: str | None) -> str | None:
        if value is not None and value != value.strip():  # a space inside may be the folder's
            raise ValueError(f"stem_model starts or ends with a space (got {value!r})")
        if value is not None and (problem := path_problem(value)):
            raise ValueError(f"stem_model {problem}")
        return value


def _not_a_device_name(value: str, consequence: str) -> str:
    if value in WINDOWS_DEVICE_NAMES:
        raise ValueError(f"{value!r} is a device name on Windows, where {consequence}")
    return value


def model_problem(model: str, name: str = "model") -> str | None:
    """Why `model` (a manifest's, or the option `name`) can name neither a hub id nor a
    folder, if so."""
    if model != model.strip() or any(c.isspace() for c in model):
        return f"{name} has a space, which no model id or path has (got {model!r})"
    if problem := path_problem(model):
        return f"{name} {problem}"
    if not model.isprintable():
        # The model libraries (safetensors) take UTF-8 paths only; a name's bytes that are not
        # UTF-8 come as surrogates, which are not printable.
        return f"{name} is not printable UTF-8 text (got {model!r}): rename the folder"
    return None


class Defaults(_Overridable):
    """Soundtrack-wide defaults merged into every track."""


# What only a rendered track has: a recording is not rendered.
_NOT_FOR_SOURCE = ("attempts", "sampling", "lyrics", "negative_prompt")
# Fields no track has together.
_EXCLUSIVE = [("bars", "duration"), *(("source", name) for name in ("model", *_NOT_FOR_SOURCE))]


def _given(*names: str) -> JsonValue:
    """JSON Schema for "each of `names` is there and not null" (null is as good as absent)."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


class Track(_Overridable):
    """One cue of the soundtrack: generated from `prompt`, or an existing recording (`source`)."""

    # The rules between fields that _prompt_or_source holds, as an editor can check them.
    model_config = ConfigDict(
        **_Strict.model_config,
        json_schema_extra={
            "oneOf": [_given("prompt"), _given("source")],
            "not": {"anyOf": [_given(*pair) for pair in _EXCLUSIVE]},
            "allOf": [
                {"if": _given("bars"), "then": _given("bpm")},
                {"if": _given("variation_of"), "then": _given("prompt")},
            ],
        },
    )

    id: Slug = Field(
        description="Becomes the file name: lower-case letters, digits, '-'; not a device name "
        "of Windows (con, nul, com1...).",
        json_schema_extra={"not": {"enum": list[JsonValue](sorted(WINDOWS_DEVICE_NAMES))}},
    )
    prompt: str | None = Field(
        default=None,
        json_schema_extra={
            "allOf": [*_NOT_BLANK["allOf"], {"pattern": rf"[^\s{_FORMAT}.]"}],
            "maxLength": MAX_PROMPT_CHARS,
        },
        description="What to generate, as a composer's brief.",
    )
    source: str | None = Field(
        default=None,
        description="Existing recording, relative path.",
        json_schema_extra=_A_PATH,
    )
    loop: bool = Field(default=False, description="Seamless loop with loop tags.")
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="Default: derived from soundtrack and id."
    )
    bpm: int | None = Field(
        default=None,
        ge=20,
        le=300,
        description="Tempo target: words in MusicGen's prompt, conditioning for ACE-Step.",
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        json_schema_extra={"pattern": KEY_PATTERN},
        description="A note, an optional sharp or flat and major or minor (F# minor, B-flat "
        "major): a target the key gate judges; words in MusicGen's prompt, conditioning for "
        "ACE-Step. Written back normalised (Bb major).",
    )
    time_signature: str | None = Field(
        default=None,
        pattern=TIME_SIGNATURE_PATTERN,
        description="E.g. 3/4: words in MusicGen's prompt, conditioning for ACE-Step.",
    )
    lyrics: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        json_schema_extra=_NOT_BLANK,
        description="Words to sing (ACE-Step, Bark); without them ACE-Step renders an "
        "instrumental.",
    )
    negative_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        json_schema_extra=_NOT_BLANK,
        description="What to steer away from (Stable Audio's guidance); other families refuse it.",
    )
    bars: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BARS,
        description="Length in bars at bpm (needs bpm), instead of duration; a loop is cut to "
        "whole bars either way.",
    )
    variation_of: Slug | None = Field(
        default=None,
        description="Another track's id: this one is rendered from that track's approved audio "
        "(an ACE-Step cover), after it, and judged by the theme gate (docs/generation.md"
        "#variations).",
    )
    mood: str | None = Field(
        default=None, min_length=1, max_length=100, json_schema_extra=_NOT_BLANK
    )
    instruments: (
        list[Annotated[str, Field(min_length=1, max_length=60, json_schema_extra=_A_NAME)]] | None
    ) = None

    @field_validator("id")
    @classmethod
    def _not_a_device(cls, value: str) -> str:
        return _not_a_device_name(value, f"{value}.ogg cannot be opened: name the track otherwise")

    @field_validator("prompt", "lyrics", "negative_prompt", "mood")
    @classmethod
    def _model_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Words a model reads: not blank (zero-width characters are blank too), no control
        characters, no lone surrogates (not text: the lock could not hold them); a prompt also
        loses its edge whitespace (lyrics keep theirs: they are in the spec hash as written)."""
        if value is None:
            return None
        if not visible(value):
            raise ValueError(f"{info.field_name} is empty")
        if problem := text_problem(value):
            raise ValueError(f"{info.field_name} {problem}")
        if info.field_name == "prompt" and all(c == "." or c.isspace() for c in visible(value)):
            # Its tags join it after its closing dots are cut: nothing left, the render failed
            # the whole batch it was in.
            raise ValueError("prompt has nothing but dots: say what the music is")
        if info.field_name == "prompt" and len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
        return value.strip() if info.field_name == "prompt" else value

    @field_validator("instruments")
    @classmethod
    def _instrument_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            # It joins the prompt: refused as a prompt's text is, and a line of its own.
            if not visible(name) or text_problem(name) or any(c in "\n\t" for c in name):
                raise ValueError(f"an instrument is a name in plain words (got {name!r})")
        return value

    @field_validator("key")
    @classmethod
    def _normalised_key(cls, value: str | None) -> str | None:
        return None if value is None else parse_key(value).name

    @field_validator("source")
    @classmethod
    def _source_inside(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _file_inside(value, info, "source")

    @model_validator(mode="after")
    def _prompt_or_source(self) -> Track:
        if (self.prompt is None) == (self.source is None):
            raise ValueError("needs exactly one of 'prompt' (generate) or 'source' (a recording)")
        if self.source is not None and self.model is not None:
            raise ValueError("'model' has no meaning for a 'source' track")
        if self.source is not None:
            for name in _NOT_FOR_SOURCE:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"'{name}' has no meaning for a 'source' track: it is not rendered"
                    )
        if self.bars is not None and self.duration is not None:
            raise ValueError("give 'bars' or 'duration', not both")
        if self.bars is not None and self.bpm is None:
            raise ValueError("'bars' needs 'bpm': a bar's length is counted in beats")
        if self.variation_of is not None and self.source is not None:
            raise ValueError("'variation_of' needs 'prompt': a 'source' track is not rendered")
        if self.variation_of == self.id:
            raise ValueError(f"'variation_of' names the track itself ({self.id!r})")
        return self


DEFAULT_STORAGE_WAIT_S = 900.0
MAX_STORAGE_WAIT_S = 24 * 3600.0
DEFAULT_REVIEW_TIMEOUT_S = 4 * 3600.0


class Manifest(_Strict):
    """A soundtrack manifest, schema version 1."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="soundtrack-pipeline manifest",
        json_schema_extra={"$id": "https://soundtrack-pipeline.dev/schema/v1.json"},
    )

    schema_version: Literal[1] = Field(alias="schema", description="Manifest schema version.")
    soundtrack: Slug = Field(
        description="Soundtrack name: a slug, used in storage paths; not a device name of "
        "Windows (con, nul, com1...).",
        json_schema_extra={"not": {"enum": list[JsonValue](sorted(WINDOWS_DEVICE_NAMES))}},
    )
    storage: str = Field(
        default=DEFAULT_STORAGE,
        min_length=1,
        # check_storage_url's refusals an editor can tell: blank, a mistyped s3: (S3://, s3:/),
        # another scheme://, or no bucket.
        json_schema_extra={
            "pattern": r"^(?!\s*$)(?![sS]3:(?!//))(?!(?!s3://)[A-Za-z][A-Za-z0-9+.-]*://)"
            r"(?!s3://(?![a-z0-9]))"
        },
        description="Output folder (relative to the manifest) or s3://bucket/prefix.",
    )
    defaults: Defaults = Field(default_factory=Defaults)
    expectations: str | None = Field(
        default=None,
        description="JSON file of the team's own Great Expectations checks (docs/gates.md).",
        json_schema_extra=_A_PATH,
    )
    usage: Literal["commercial", "non-commercial"] | None = Field(
        default=None,
        description="What the assets are for: under commercial, every model's licence must "
        "allow selling its output (docs/manifest.md#licences). Absent: nothing is checked.",
    )
    accepted_licenses: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list,
        max_length=50,
        description="Licence ids the studio accepts by its own agreement (e.g. "
        "stabilityai-community), beside those that allow commercial use outright.",
    )
    storage_wait_s: float = Field(
        default=DEFAULT_STORAGE_WAIT_S,
        ge=0,
        le=MAX_STORAGE_WAIT_S,
        description="How long a build waits for another build of this soundtrack to the same "
        "storage to finish before it gives up with exit code 75 (docs/storage.md).",
    )
    review: Literal["required", "none"] = Field(
        default="none",
        description="required: after the gates and before anything is published, the build "
        "pauses for a person to approve or reject each track it rendered, in the Prefect UI "
        "(needs a Prefect server: PREFECT_API_URL; docs/review.md#approval).",
    )
    review_timeout_s: float = Field(
        default=DEFAULT_REVIEW_TIMEOUT_S,
        ge=1,
        le=7 * 24 * 3600,
        description="How long a build waits for the review before it fails with nothing published.",
    )
    tracks: list[Track] = Field(min_length=1, max_length=MAX_TRACKS)

    @field_validator("soundtrack")
    @classmethod
    def _not_a_device(cls, value: str) -> str:
        return _not_a_device_name(value, f"no folder {value}/ can be made: name it otherwise")

    @field_validator("expectations")
    @classmethod
    def _expectations_inside(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _file_inside(value, info, "expectations")

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        check_storage_url(value)
        return value


def _file_inside(value: str | None, info: ValidationInfo, what: str) -> str | None:
    """Check that a relative path names a file inside the manifest's folder (symlinks too)."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"{what} is empty: give a path relative to the manifest")
    if problem := path_problem(value):
        raise ValueError(f"{what} {problem}")
    base = (info.context or {}).get("base_dir")
    if Path(value).is_absolute() or value.startswith("~"):
        raise ValueError(f"{what} must be a path relative to the manifest (got {value!r})")
    if base is not None:
        root = Path(base).resolve()
        resolved = (root / value).resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(f"{what} escapes the manifest's folder (got {value!r})")
        if resolved.is_dir():
            raise ValueError(
                f"{what} is a folder, not a file: {value!r} (relative to {shown(root)})"
            )
        if resolved.exists() and not resolved.is_file():
            raise ValueError(f"{what} is not a regular file (a device or pipe): {value!r}")
        if not resolved.is_file():
            raise ValueError(f"{what} file not found: {value!r} (relative to {shown(root)})")
    return value


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (committed as manifests/soundtrack.schema.json)."""
    schema = Manifest.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    for node in _objects(schema):
        # Patterns ending in `$` end as JavaScript reads it, in Python's regexes too (whose `$`
        # also matches before a last newline). pydantic's own checks keep `$`: its engine has
        # no lookahead, and matches `$` at the very end.
        pattern = node.get("pattern")
        if isinstance(pattern, str) and re.search(r"(?<!\\)\$$", pattern):
            node["pattern"] = pattern[:-1] + _END
        # A setting left out takes the defaults' value, or a built-in one (docs/manifest.md),
        # not null: an editor showed `default: null` for every one.
        if "default" in node and node["default"] is None:
            del node["default"]
    return schema


# The end as both read it: Python's `$` also matches before a last newline.
_END = r"(?![\s\S])"


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in a JSON document, each before what it holds."""
    if isinstance(node, dict):
        yield node
        for value in list(node.values()):
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)
