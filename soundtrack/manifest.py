"""The soundtrack manifest: YAML in, validated pydantic models, resolved TrackSpecs with hashes.

Validation happens once, here, at the boundary. Every problem is collected (not only the first)
and named by its field path (`tracks[2].duration`) and YAML line, so a typo is caught before any
GPU time is spent.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from soundtrack import PIPELINE_VERSION
from soundtrack.errors import InputError
from soundtrack.spec import (
    DEFAULT_LOUDNESS_PROFILE,
    LOUDNESS_PROFILES,
    AudioFormat,
    GateLimits,
    LoudnessTarget,
    Mastering,
    Sampling,
    TrackSpec,
)

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 1024 * 1024  # a soundtrack manifest is a few KiB; refuse anything huge
MAX_DURATION_S = 600.0  # 10 minutes: longer than any game cue, short enough to bound GPU time
MAX_TRACKS = 500
MAX_PROMPT_CHARS = 1000
SEED_MAX = 2**32 - 1
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
S3_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DEFAULT_MODEL = "facebook/musicgen-small"
DEFAULT_STORAGE = "./assets"
# Fields that change the generated (raw) audio; the generation cache is keyed on these alone, so
# re-mastering to a new loudness profile does not regenerate.
_GENERATION_FIELDS = ("model", "model_revision", "prompt", "seed", "sampling", "overlap_s")

Slug = Annotated[str, Field(pattern=SLUG_PATTERN, description="Lower-case letters, digits, '-'.")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoudnessSpec(_Strict):
    """Explicit loudness targets instead of a named profile."""

    integrated: float = Field(ge=-40, le=-5, description="Integrated loudness target, LUFS.")
    true_peak: float = Field(default=-1.0, ge=-12, le=0, description="True-peak ceiling, dBTP.")
    tolerance: float = Field(default=2.0, gt=0, le=6, description="Allowed deviation, LU.")


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


class GatesSpec(_Strict):
    """Overrides of the quality-gate limits (docs/gates.md); unset keys keep the defaults."""

    duration_tolerance_s: float | None = Field(default=None, gt=0, le=60)
    silence_floor_lufs: float | None = Field(default=None, ge=-120, le=-20)
    dropout_max_s: float | None = Field(default=None, gt=0, le=60)
    dropout_threshold_dbfs: float | None = Field(default=None, ge=-120, le=-20)
    lead_silence_max_ms: float | None = Field(default=None, ge=0, le=10_000)
    trail_silence_max_s: float | None = Field(default=None, ge=0, le=60)
    clip_run_samples: int | None = Field(default=None, ge=1, le=1000)
    clipped_runs_max: int | None = Field(default=None, ge=0)
    dc_offset_max: float | None = Field(default=None, ge=0, le=1)
    seam_jump_max_ratio: float | None = Field(default=None, gt=0)
    seam_loudness_max_lu: float | None = Field(default=None, gt=0, le=20)


class _Overridable(_Strict):
    """Settings a soundtrack sets in `defaults` and a track may override."""

    model: str | None = Field(default=None, min_length=1, description="Hub id or local directory.")
    model_revision: str | None = Field(
        default=None, min_length=1, description="Hub revision (branch, tag or commit) to pin."
    )
    duration: float | None = Field(default=None, gt=0, le=MAX_DURATION_S, description="Seconds.")
    formats: list[AudioFormat] | None = Field(default=None, min_length=1)
    loudness: Loudness | None = Field(
        default=None, description="Profile (console -24, mobile -18, web -16 LUFS) or targets."
    )
    sampling: SamplingSpec | None = None
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

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, value: list[AudioFormat] | None) -> list[AudioFormat] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"formats must not repeat (got {value})")
        return value

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or any(c.isspace() for c in value)):
            raise ValueError(f"a model id or path has no spaces (got {value!r})")
        return value


class Defaults(_Overridable):
    """Soundtrack-wide defaults merged into every track."""


class Track(_Overridable):
    """One cue of the soundtrack: generated from `prompt`, or an existing recording (`source`)."""

    id: Slug = Field(description="Becomes the file name: lower-case letters, digits, '-'.")
    prompt: str | None = Field(default=None, description="What to generate, as a composer's brief.")
    source: str | None = Field(default=None, description="Existing recording, relative path.")
    loop: bool = Field(default=False, description="Seamless loop with loop tags.")
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="Default: derived from soundtrack and id."
    )
    bpm: int | None = Field(default=None, ge=20, le=300, description="Added to the prompt.")
    key: str | None = Field(default=None, min_length=1, max_length=40, description="E.g. D minor.")
    mood: str | None = Field(default=None, min_length=1, max_length=100)
    instruments: list[Annotated[str, Field(min_length=1, max_length=60)]] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("prompt is empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise ValueError("prompt contains control characters")
        return value.strip()

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
        return self


class Manifest(_Strict):
    """A soundtrack manifest, schema version 1."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="soundtrack-pipeline manifest",
        json_schema_extra={"$id": "https://soundtrack-pipeline.dev/schema/v1.json"},
    )

    schema_version: Literal[1] = Field(alias="schema", description="Manifest schema version.")
    soundtrack: Slug = Field(description="Soundtrack name: a slug, used in storage paths.")
    storage: str = Field(
        default=DEFAULT_STORAGE,
        min_length=1,
        description="Output folder (relative to the manifest) or s3://bucket/prefix.",
    )
    defaults: Defaults = Field(default_factory=Defaults)
    expectations: str | None = Field(
        default=None,
        description="JSON file of the team's own Great Expectations checks (docs/gates.md).",
    )
    tracks: list[Track] = Field(min_length=1, max_length=MAX_TRACKS)

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
    base = (info.context or {}).get("base_dir")
    if Path(value).is_absolute() or value.startswith("~"):
        raise ValueError(f"{what} must be a path relative to the manifest (got {value!r})")
    if base is not None:
        root = Path(base).resolve()
        resolved = (root / value).resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(f"{what} escapes the manifest's folder (got {value!r})")
        if not resolved.is_file():
            raise ValueError(f"{what} file not found: {value!r} (relative to {root})")
    return value


def check_storage_url(value: str) -> None:
    """Raise ValueError unless `value` is a folder path or an s3://bucket[/prefix] URL."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        if "\x00" in value:
            raise ValueError("storage path contains a NUL byte")
        return
    if scheme != "s3":
        raise ValueError(f"storage must be a folder or s3://bucket/prefix (got scheme {scheme!r})")
    bucket, _, prefix = rest.partition("/")
    if not S3_BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} in storage URL")
    if any(part in ("", ".", "..") for part in prefix.strip("/").split("/")) and prefix.strip("/"):
        raise ValueError(f"invalid S3 prefix {prefix!r} (empty, '.' or '..' segments)")


# --- reading -------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"manifest not found: {path}")
    if not path.is_file():
        raise InputError(f"manifest is not a file: {path}")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(
            f"manifest {path} is {size} bytes; refusing anything above {MAX_MANIFEST_BYTES} bytes"
        )
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise InputError(f"manifest {path} is a binary file, not YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"manifest {path} is not UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from None
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise InputError(f"manifest {path} is empty")
    return text


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[str, int]]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark and exc.problem_mark:
            start = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            problem += f" ({exc.context} started at {start})"
        raise InputError(
            f"{path}: YAML error at {where}: {problem}",
            [f"line {mark.line + 1}: {problem}" if mark else problem],
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: YAML error: {exc}") from None
    return data, _line_map(node)


def _line_map(node: yaml.Node | None, path: str = "") -> dict[str, int]:
    """Map field paths (`tracks[2].duration`) to the YAML line where each value starts."""
    lines: dict[str, int] = {}
    if node is None:
        return lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines[child] = key_node.start_mark.line + 1
            lines.update({k: v for k, v in _line_map(value_node, child).items() if k != child})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_map(item, f"{path}[{index}]"))
    return lines


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("profile", "explicit"):  # discriminated-union tags are not fields
            continue
        else:
            path += f".{part}" if path else part
    return path


def _describe(error: Any, model_fields: dict[str, list[str]]) -> tuple[str, str]:
    loc = tuple(error["loc"])
    path = _field_path(loc)
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        parent = _field_path(loc[:-1])
        allowed = model_fields.get(_parent_kind(parent), [])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return path, f"unknown key{hint} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return path, "required"
    message = str(error["msg"]).removeprefix("Value error, ")
    if given is not None and not isinstance(given, dict | list) and repr(given) not in message:
        message += f" (got {given!r})"
    return path, message


def _parent_kind(parent: str) -> str:
    if parent == "":
        return "manifest"
    if re.fullmatch(r"tracks\[\d+\]", parent):
        return "track"
    return parent.rsplit(".", 1)[-1]


def _allowed_keys() -> dict[str, list[str]]:
    def keys(model: type[BaseModel]) -> list[str]:
        return sorted(f.alias or name for name, f in model.model_fields.items())

    return {
        "manifest": keys(Manifest),
        "track": keys(Track),
        "defaults": keys(Defaults),
        "sampling": keys(SamplingSpec),
        "gates": keys(GatesSpec),
        "loudness": keys(LoudnessSpec),
    }


def _duplicate_ids(data: dict[str, Any]) -> list[tuple[str, str]]:
    tracks = data.get("tracks")
    if not isinstance(tracks, list):
        return []
    first: dict[str, int] = {}
    problems = []
    for index, track in enumerate(tracks):
        track_id = track.get("id") if isinstance(track, dict) else None
        if not isinstance(track_id, str):
            continue
        if track_id in first:
            problems.append(
                (
                    f"tracks[{index}].id",
                    f"duplicate track id {track_id!r} (also tracks[{first[track_id]}])",
                )
            )
        else:
            first[track_id] = index
    return problems


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; raise InputError listing every problem found."""
    path = Path(path)
    text = _read_text(path)
    data, lines = _parse_yaml(text, path)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise InputError(
            f"{path}: the top level must be a mapping (schema, soundtrack, tracks), got {kind}",
            [f"(top level): must be a mapping with keys schema, soundtrack, tracks; got {kind}"],
        )
    problems: list[tuple[str, str]] = []
    if "schema" not in data:
        problems.append(("schema", f"required: add `schema: {SCHEMA_VERSION}` as the first line"))
    elif data["schema"] != SCHEMA_VERSION:
        problems.append(
            (
                "schema",
                f"unsupported schema version {data['schema']!r} "
                f"(this soundtrack-pipeline reads schema {SCHEMA_VERSION})",
            )
        )
    problems += _duplicate_ids(data)
    manifest: Manifest | None = None
    try:
        manifest = Manifest.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        allowed = _allowed_keys()
        for error in exc.errors():
            entry = _describe(error, allowed)
            if entry[0] == "schema_version" or entry[0] == "schema":
                continue  # reported above with a better message
            problems.append(entry)
    if problems or manifest is None:
        messages = [_with_line(field, message, lines) for field, message in problems]
        raise InputError(f"{path}: {len(messages)} problem(s) in the manifest", messages)
    return manifest


def _with_line(field: str, message: str, lines: dict[str, int]) -> str:
    probe = field
    while probe not in lines and (parent := re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)) != probe:
        probe = parent
    line = lines.get(probe)
    where = f" (line {line})" if line else ""
    return f"{field or '(top level)'}{where}: {message}"


# --- resolving -----------------------------------------------------------------------------------


def derived_seed(soundtrack: str, track_id: str) -> int:
    """A stable seed for tracks that set none, so rebuilds reproduce the same audio."""
    digest = hashlib.sha256(f"{soundtrack}/{track_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def full_prompt(track: Track) -> str | None:
    """The prompt with the track's musical tags appended, as the model receives it."""
    if track.prompt is None:
        return None
    parts = [track.prompt.rstrip(". ")]
    if track.key:
        parts.append(track.key)
    if track.bpm:
        parts.append(f"{track.bpm} BPM")
    if track.mood:
        parts.append(track.mood)
    if track.instruments:
        parts.append(", ".join(track.instruments))
    return ", ".join(parts)


def _merge(defaults: Defaults, track: Track) -> dict[str, Any]:
    # exclude_unset: a track's `sampling: {top_k: 100}` must not reset the soundtrack's temperature.
    merged = defaults.model_dump(exclude_unset=True, exclude_none=True)
    for name, value in track.model_dump(exclude_unset=True, exclude_none=True).items():
        if name in ("sampling", "gates") and name in merged:
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


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


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_tracks(
    manifest: Manifest, base_dir: Path, *, model_override: str | None = None
) -> list[TrackSpec]:
    """Merge defaults into every track and compute its spec hash (see docs/manifest.md).

    `model_override` replaces every generated track's model (e.g. a tiny model for smoke tests).
    """
    specs = []
    expectations = (base_dir / manifest.expectations).resolve() if manifest.expectations else None
    for track in manifest.tracks:
        merged = _merge(manifest.defaults, track)
        if model_override is not None:
            merged["model"] = model_override
        source = (base_dir / track.source).resolve() if track.source else None
        # A recording keeps its own length unless the track itself asks for another: the
        # soundtrack-wide default duration is meant for what gets generated.
        duration_s: float = (
            merged.get("duration", 30.0)
            if source is None
            else track.duration or _recording_seconds(source)
        )
        loudness = _loudness_target(merged.get("loudness"))
        gates = GateLimits(**merged.get("gates", {}))
        mastering = Mastering(
            loudness=loudness,
            **{
                name: merged[name]
                for name in (
                    "fade_in_ms",
                    "fade_out_s",
                    "loop_crossfade_ms",
                    "sample_rate",
                    "channels",
                )
                if name in merged
            },
        )
        fields: dict[str, Any] = {
            "pipeline_version": PIPELINE_VERSION,
            "soundtrack": manifest.soundtrack,
            "id": track.id,
            "prompt": full_prompt(track),
            "source_sha256": file_sha256(source) if source else None,
            "model": None if source else merged.get("model", DEFAULT_MODEL),
            "model_revision": None if source else merged.get("model_revision"),
            "duration_s": float(duration_s),
            "loop": track.loop,
            "seed": track.seed
            if track.seed is not None
            else derived_seed(manifest.soundtrack, track.id),
            "sampling": asdict(Sampling(**merged.get("sampling", {}))),
            "overlap_s": float(merged.get("overlap_s", 10.0)),
            "mastering": asdict(mastering),
            "gates": asdict(gates),
            "formats": list(merged.get("formats", ["ogg", "mp3"])),
            "wav_bit_depth": merged.get("wav_bit_depth", 16),
            "expectations_sha256": file_sha256(expectations) if expectations else None,
        }
        spec = TrackSpec(
            soundtrack=manifest.soundtrack,
            id=track.id,
            duration_s=fields["duration_s"],
            loop=track.loop,
            seed=fields["seed"],
            model=_model_location(fields["model"], base_dir),
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
            expectations=expectations,
        )
        if source is None:
            generation = {name: fields[name] for name in (*_GENERATION_FIELDS, "pipeline_version")}
            generation["render_duration_s"] = spec.render_duration_s
            spec = replace(spec, generation_key=_canonical_hash(generation))
        specs.append(spec)
    return specs


def _model_location(model: str | None, base_dir: Path) -> str:
    """A model directory relative to the manifest loads from there; anything else is a hub id."""
    if model is None:
        return ""
    local = (base_dir / model).expanduser()
    return str(local.resolve()) if local.is_dir() else model


def _recording_seconds(path: Path) -> float:
    import soundfile  # local: only source tracks need it

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise InputError(f"cannot read the source recording {path.name}: {exc}") from None
    seconds = float(info.frames) / float(info.samplerate)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"source recording {path.name} has no audio")
    return seconds


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (committed as manifests/soundtrack.schema.json)."""
    schema = Manifest.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
