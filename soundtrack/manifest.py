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
from collections.abc import Hashable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

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
from soundtrack.formats import AudioFormat
from soundtrack.hashing import file_sha256
from soundtrack.loops import SEARCH_S, loop_end_range, loop_tail_samples, render_duration_s
from soundtrack.spec import (
    DEFAULT_LOUDNESS_PROFILE,
    LOUDNESS_PROFILES,
    GateLimits,
    LoudnessTarget,
    Mastering,
    Sampling,
    TrackSpec,
    default_fade_out_s,
)
from soundtrack.storage import check_storage_url

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 1024 * 1024  # a soundtrack manifest is a few KiB; refuse anything huge
MAX_DURATION_S = 600.0  # 10 minutes: longer than any game cue, short enough to bound GPU time
# One BS.1770 gating block: mastering refuses anything shorter. Copied from
# soundtrack.master._MIN_DURATION_S (importing master costs scipy's import time); a test keeps
# the two equal.
MIN_DURATION_S = 0.4
MAX_SOURCE_CHANNELS = 2  # mastering maps mono or stereo (master._to_channels)
# Limits on the YAML structure, checked on the composed node graph before any Python object is
# built: nine anchors of nine aliases each (a 700-byte "billion laughs") would otherwise expand
# to 9**9 values. A real manifest has 500 tracks at most, each a few dozen values, and uses
# aliases for `<<: *defaults` merges: two per track at the most tracks allowed, five times the
# values of the largest manifest the models accept, and a few levels of nesting.
MAX_YAML_ALIASES = 1_000
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32
MAX_TRACKS = 500
MAX_PROMPT_CHARS = 1000
SEED_MAX = 2**32 - 1
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
DEFAULT_MODEL = "facebook/musicgen-small"
DEFAULT_STORAGE = "./assets"
# Fields that change the generated (raw) audio; the generation cache is keyed on these alone, so
# re-mastering to a new loudness profile does not regenerate.
_GENERATION_FIELDS = ("model", "model_revision", "prompt", "seed", "sampling", "overlap_s")
_MASTERING_FIELDS = ("fade_in_ms", "fade_out_s", "loop_crossfade_ms", "sample_rate", "channels")

Slug = Annotated[str, Field(pattern=SLUG_PATTERN, description="Lower-case letters, digits, '-'.")]


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field's type admits a number but not a bool (int, float, Literal[1, 2], ...)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(arg, int | float) for arg in get_args(annotation))
    args = get_args(annotation)
    return any(_takes_numbers(arg) for arg in args) and bool not in args


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` would silently switch a gate off (every comparison
    # with nan is false); no setting of a manifest has a use for them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads a bool as 1 or 0 where a number is expected: `seed: true` would be 1.
        name = info.field_name
        if isinstance(value, bool) and name and _takes_numbers(cls.model_fields[name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


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
    duration: float | None = Field(
        default=None, ge=MIN_DURATION_S, le=MAX_DURATION_S, description="Seconds."
    )
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


# --- reading -------------------------------------------------------------------------------------


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one), bounds
    aliases and nesting while it composes, and reports a value it cannot build at its line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Count aliases and nesting as the composer meets them: its recursion is bounded too."""
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_YAML_ALIASES} aliases (*name); "
                    f"a manifest may use at most {MAX_YAML_ALIASES}",
                    self._next_mark(),
                )
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep; "
                    f"a manifest may nest at most {MAX_YAML_DEPTH}",
                    self._next_mark(),
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _next_mark(self) -> yaml.error.Mark | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # stub lacks it
        # The pure-Python parser (SafeLoader) makes yaml.error.Mark; libyaml's are never seen.
        return event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Build one value; a scalar Python cannot hold (an integer of 5000 digits, the date
        2024-13-45) becomes a YAML error at its line instead of a bare ValueError."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({exc})", node.start_mark
            ) from None


def _construct_mapping(loader: _ManifestLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # `<<: *defaults`: overriding the merged keys is what a merge is for
        key = loader.construct_object(key_node)
        # A list or mapping as a key: construct_mapping reports it ("found unhashable key").
        if not isinstance(key, Hashable):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_ManifestLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a graph whose aliases expand it beyond MAX_YAML_NODES values or MAX_YAML_DEPTH
    levels, or into itself. Aliases share nodes, so each node's expanded size is computed
    once (post-order, memoised): linear in the document, however much it would expand."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # the current path: meeting one again is a recursive alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases (*name) expand this value to more than {MAX_YAML_NODES:,} "
                    f"values; a manifest may expand to at most {MAX_YAML_NODES:,}",
                    node.start_mark,
                )
            if depth[key] > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases (*name) nest this value more than {MAX_YAML_DEPTH} levels deep; "
                    f"a manifest may nest at most {MAX_YAML_DEPTH}",
                    node.start_mark,
                )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise yaml.composer.ComposerError(
                None,
                None,
                "an alias (*name) refers to a value that contains it; a manifest cannot recurse",
                node.start_mark,
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


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
    """Compose the YAML once, check its aliases and nesting, then build the data from it."""
    loader = None
    try:
        loader = _ManifestLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_expansion(node)
        lines = _line_map(node)  # before construction: merges rewrite the mappings' nodes
        data = loader.construct_document(node)
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
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _line_map(root: yaml.Node | None) -> dict[str, int]:
    """Map field paths (`tracks[2].duration`) to the YAML line where each value starts.

    A node that aliases share is walked once, at its first path: a path through a later alias
    maps as far as the alias and falls back to its line."""
    lines: dict[str, int] = {}
    if root is None:
        return lines
    walked: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in walked:
            continue
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in reversed(node.value):
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in reversed(list(enumerate(node.value))):
                stack.append((item, f"{path}[{index}]"))
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
    # The value as a whole token: "0" inside "greater than or equal to 0.4" is not the input.
    shown = re.compile(rf"(?<![\w.]){re.escape(repr(given))}(?![\w.])")
    if given is not None and not isinstance(given, dict | list) and not shown.search(message):
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
    elif isinstance(data["schema"], bool) or data["schema"] != SCHEMA_VERSION:
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
    if manifest is not None and not problems:
        # Each setting is within its range; whether they render together is asked next.
        problems += _render_problems(manifest, path.parent)
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


def seconds_to_render(duration_s: float, mastering: Mastering, *, loop: bool) -> float:
    """Seconds to generate: a loop needs room to search for its end and a crossfade tail."""
    return render_duration_s(duration_s, mastering.loop_crossfade_ms) if loop else duration_s


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
        duration_s = _duration_s(
            track, merged, None if source is None else _recording(source).duration_s
        )
        gates = GateLimits(**merged.get("gates", {}))
        mastering = _mastering(merged, duration_s, loop=track.loop)
        # The hashed fields: their names and values are the spec hash, so neither may change.
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
            render_duration_s=seconds_to_render(fields["duration_s"], mastering, loop=track.loop),
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


def _duration_s(track: Track, merged: dict[str, Any], recording_s: float | None) -> float:
    """A recording keeps its own length unless the track itself asks for another: the
    soundtrack-wide default duration is meant for what gets generated."""
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


def _render_problems(manifest: Manifest, base_dir: Path) -> list[tuple[str, str]]:
    """Settings that are each in range but cannot be rendered together (mastering and loops
    would raise half-way through a build), and source recordings mastering cannot take."""
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
        duration_s = _duration_s(track, merged, recording.duration_s if recording else None)
        mastering = _mastering(merged, duration_s, loop=track.loop)
        for name, message in _unrenderable(track, merged, duration_s, mastering, recording):
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
) -> list[tuple[str, str]]:
    """(field, message) for each render-time check of master.py and loops.py this track would
    fail; the checks are theirs, done in samples at the output rate as they do them."""
    sample_rate = mastering.sample_rate
    frames = round(duration_s * sample_rate)
    if recording is not None:  # mastering cuts a recording to the duration, never lengthens it
        frames = min(frames, round(recording.duration_s * sample_rate))
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
    if 2 * crossfade_frames > earliest_end:
        name = "loop_crossfade_ms" if "loop_crossfade_ms" in merged else "duration"
        return [
            (
                name,
                f"a {duration_s:g} s loop is too short for its {crossfade_ms:g} ms crossfade: "
                f"a loop needs at least {SEARCH_S:g} s (the search for its end) + 2 x the "
                f"crossfade = {SEARCH_S + 2 * crossfade_ms / 1000.0:g} s",
            )
        ]
    if recording is None or latest_end >= earliest_end:
        return []
    name = "duration" if track.duration is not None else "loop_crossfade_ms"
    needed_s = duration_s - SEARCH_S + loop_tail_samples(crossfade_frames) / sample_rate
    return [
        (
            name,
            f"the recording is {recording.duration_s:.2f} s long; a {duration_s:g} s loop with a "
            f"{crossfade_ms:g} ms crossfade needs at least {needed_s:.2f} s of audio (its end "
            f"is searched from {SEARCH_S:g} s before the duration, and the crossfade follows it)",
        )
    ]


def _model_location(model: str | None, base_dir: Path) -> str:
    """A model directory relative to the manifest loads from there; anything else is a hub id."""
    if model is None:
        return ""
    local = (base_dir / model).expanduser()
    return str(local.resolve()) if local.is_dir() else model


@dataclass(frozen=True)
class _Recording:
    """What validation needs to know of a source recording (read from its header)."""

    duration_s: float
    channels: int


def _recording(path: Path) -> _Recording:
    """Read a source recording's header; raise InputError for one that mastering cannot take."""
    import soundfile  # local: only source tracks need it

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise InputError(f"cannot read the source recording {path.name}: {exc}") from None
    duration_s = float(info.frames) / float(info.samplerate)
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
    return _Recording(duration_s=duration_s, channels=int(info.channels))


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (committed as manifests/soundtrack.schema.json)."""
    schema = Manifest.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
