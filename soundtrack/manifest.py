"""Reading a manifest: YAML in, every problem named by its field path and line, a Manifest out.

Validation happens once, here, at the boundary. Every problem is collected (not only the first)
and named by its field path (`tracks[2].duration`) and YAML line, so a typo is caught before any
GPU time is spent. The keys themselves are declared in soundtrack.schema.
"""

from __future__ import annotations

import codecs
import difflib
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from soundtrack.errors import InputError
from soundtrack.resolve import render_problems
from soundtrack.schema import (
    PATTERN_WORDS,
    SCHEMA_VERSION,
    AceStepSamplingSpec,
    Defaults,
    FamilySamplingSpec,
    GatesSpec,
    LoudnessSpec,
    Manifest,
    SamplingSpec,
    StableAudioSamplingSpec,
    Track,
)

_QUOTE_CHARS = 80
MAX_MANIFEST_BYTES = 1024 * 1024  # a soundtrack manifest is a few KiB; refuse anything huge
# Limits on the YAML structure, checked on the composed node graph before any Python object is
# built: nine anchors of nine aliases each (a 700-byte "billion laughs") would otherwise expand
# to 9**9 values. A real manifest has 500 tracks at most, each a few dozen values, and uses
# aliases for `<<: *defaults` merges: two per track at the most tracks allowed, five times the
# values of the largest manifest the models accept, and a few levels of nesting.
MAX_YAML_ALIASES = 1_000
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one), bounds
    aliases and nesting while it composes, and reports a value it cannot build at its line."""

    def __init__(self, text: str, *, names_only: bool = False) -> None:
        super().__init__(text)
        self.aliases = 0
        self.nodes = 0
        self.depth = 0
        # A manifest's keys are all field names; a model card's need not be (`2023: ...`).
        self.names_only = names_only

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Count aliases, values and nesting as the composer meets them: its recursion and its
        time are bounded too (a megabyte of `[x,x,x...]` took 12 s to compose in full)."""
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise self._refused("aliases (*name)", f"{MAX_YAML_ALIASES}", "use")
        else:
            self.nodes += 1
            if self.nodes > MAX_YAML_NODES:
                raise self._refused("values", f"{MAX_YAML_NODES:,}", "hold")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise self._refused("levels deep", f"{MAX_YAML_DEPTH}", "nest", nested=True)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _refused(
        self, what: str, most: str, verb: str, *, nested: bool = False
    ) -> yaml.composer.ComposerError:
        """More than `most` of `what` found here, where a manifest may `verb` at most `most`."""
        found = f"{'nested ' if nested else ''}more than {most} {what}"
        return yaml.composer.ComposerError(
            None, None, f"{found}; a manifest may {verb} at most {most}", self._next_mark()
        )

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
    """The mapping, its keys checked; merged mappings (`<<`) are built through this constructor
    too, so their keys are checked as well (PyYAML copies their pairs in unchecked), and the
    earlier of several wins, as YAML's merge says (PyYAML 6.0.4 may let the later win)."""
    _check_keys(loader, node)
    merged: dict[Any, Any] = {}
    own = []
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE_TAG:
            own.append((key_node, value_node))
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"`<<` merges a mapping or a list of mappings, not {source.id}",
                    source.start_mark,
                )
            merged.update(loader.construct_object(source))
    if len(own) == len(node.value):
        return loader.construct_mapping(node)
    bare = yaml.MappingNode(node.tag, own, node.start_mark, node.end_mark, node.flow_style)
    return {**merged, **loader.construct_mapping(bare)}


def _check_keys(loader: _ManifestLoader, node: yaml.MappingNode) -> None:
    """Every key of the mapping is a name (in a manifest), once; a merge (`<<`) at most once."""
    seen: dict[Hashable, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            # `<<: *defaults`: overriding the merged keys is what a merge is for; a second
            # merge is a duplicate key, and which one the writer meant only they know.
            if _MERGE_TAG in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '<<' (first on line {seen[_MERGE_TAG]}): merge a list of "
                    "mappings with one `<<: [*a, *b]`",
                    key_node.start_mark,
                )
            seen[_MERGE_TAG] = key_node.start_mark.line + 1
            continue
        if loader.names_only and not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a list or a mapping as a key: a key is a name", key_node.start_mark
            )
        key = loader.construct_object(key_node)
        # A list or mapping as a key: construct_mapping reports it ("found unhashable key").
        if not isinstance(key, Hashable):
            continue
        # Every mapping in a manifest is named fields (the schema's `Keys should be strings`
        # would name the mapping's line and call a `~` key "None").
        if loader.names_only and not isinstance(key, str):
            written = f"`{key_node.value}`" if key_node.value else "an empty key"
            kind = "null" if key is None else "a flag" if isinstance(key, bool) else "a number"
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{written} reads as {kind}, and a key is a name: quote it if it is one",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1


_ManifestLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _refused_tag(loader: _ManifestLoader, node: yaml.Node) -> Any:
    """A set has no order (its spec hash would change from run to run), bytes are no text, and
    a list of pairs is no mapping: none is a value a manifest holds."""
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"the {node.tag.replace('tag:yaml.org,2002:', '!!')} tag makes no manifest value: "
        "write a list or a mapping",
        node.start_mark,
    )


for _tag in ("set", "binary", "omap", "pairs"):
    _ManifestLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refused_tag)


# YAML 1.2's core schema, as editors and people read a manifest. PyYAML reads YAML 1.1, where
# 0120 is octal 80 (and 090 text), 1:30 is 90 (base 60), 1_000 and 0b101 are numbers, 0o17 is
# text, yes/no/on/off are flags and 2024-01-01 is a date; in YAML 1.2 each is the other.
_CORE_SCHEMA = (  # (tag, pattern, first characters); ints before floats: 120 matches both
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", list("-+0123456789")),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        list("-+.0123456789"),
    ),
)
# Of YAML 1.1's other implicit tags, keep `<<` merges (`<<: *defaults`) and the reserved
# indicators' error; `=` (the value tag) is text.
_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag.endswith((":merge", ":yaml"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in _CORE_SCHEMA:
    _ManifestLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), _first
    )


# Far above any field's bound (a seed is under 2**32): a longer integer is refused as written,
# before Python builds it (or its text, to quote it: over 4300 digits that raises).
_MAX_INTEGER_DIGITS = 40


def _construct_int(loader: _ManifestLoader, node: yaml.ScalarNode) -> int:
    text = node.value
    based = text[:2] in ("0o", "0x")  # YAML 1.2's core schema signs decimal integers only
    digits = (text[2:] if based else text.lstrip("+-")).lstrip("0")
    if len(digits) > _MAX_INTEGER_DIGITS:
        raise ValueError(
            f"an integer of {len(digits)} digits, larger than any setting takes (quote it if "
            "it is text)"
        )
    return int(text, 0) if based else int(text, 10)


def _construct_float(loader: _ManifestLoader, node: yaml.ScalarNode) -> float:
    text = node.value.lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


def _construct_text(loader: _ManifestLoader, node: yaml.ScalarNode) -> str:
    """The scalar as its text: a date tagged as one (!!timestamp 2024-01-01), as a manifest
    holds no dates, and `<<` anywhere but as a mapping's key (where it merges)."""
    return str(node.value)


_ManifestLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)
_ManifestLoader.add_constructor(_MERGE_TAG, _construct_text)
_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_ManifestLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


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
    with path.open("rb") as file:
        # No more than the limit is read: a file's size may say 0 (/proc) or grow meanwhile.
        raw = file.read(MAX_MANIFEST_BYTES + 1)
    if size > MAX_MANIFEST_BYTES or len(raw) > MAX_MANIFEST_BYTES:
        raise InputError(
            f"manifest {path} is {max(size, len(raw))} bytes"
            f"{'' if len(raw) <= size else ' or more'}; refusing anything above "
            f"{MAX_MANIFEST_BYTES} bytes"
        )
    if encoding := _wide_encoding(raw):
        raise InputError(f"manifest {path} is {encoding} text; save it as UTF-8")
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
        loader = _ManifestLoader(text, names_only=True)  # its reader refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_expansion(node)
        lines = _line_map(node)  # before construction, which may rewrite mapping nodes
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark and exc.problem_mark:
            start = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            problem += f" ({exc.context} started at {start})"
        raise InputError(f"{path}: YAML error at {where}: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise InputError(
            f"{path}: YAML error at line {line}, column {column}: the control character "
            f"U+{exc.character:04X} is not allowed in YAML text; remove it"
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: YAML error: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def load_yaml(text: str) -> Any:
    """YAML data read as a manifest is (safe types, no duplicate keys, bounded aliases and
    nesting), for the other YAML the tool reads; yaml.YAMLError when it cannot be."""
    loader = _ManifestLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
        elif part in ("profile", "explicit", "flat", "families"):  # union tags are not fields
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
        owner = _parent_kind(parent)
        if owner == "sampling" and "families" in loc:  # the per-family form, keyed by family
            owner = "sampling families"
        allowed = model_fields.get(owner, [])
        if owner == "defaults" and loc[-1] in model_fields["track"]:
            return path, f"{loc[-1]!r} is set on each track, not in defaults"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return path, f"unknown key{hint} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return path, "required"
    if kind == "too_short":
        wanted, got = error["ctx"]["min_length"], error["ctx"]["actual_length"]
        return (
            path,
            f"must list at least {wanted} {'entry' if wanted == 1 else 'entries'}, got {got}",
        )
    if kind == "string_pattern_mismatch" and error["ctx"]["pattern"] in PATTERN_WORDS:
        return path, f"{PATTERN_WORDS[error['ctx']['pattern']]} (got {_quoted(given)})"
    message = str(error["msg"]).removeprefix("Value error, ")
    # pydantic names its classes ("a valid dictionary or instance of AceStepSamplingSpec"):
    # a manifest has mappings.
    message = re.sub(r" or instance of \w+", "", message).replace("valid dictionary", "mapping")
    if given is None and kind.endswith("_type"):
        return path, f"{message} (got null)"
    if (
        isinstance(given, str)
        and kind in _QUOTED_HINTS
        and (kind == "bool_type" or _numeric(given))
    ):
        return path, f"{message} (got {_quoted(given)}): {_QUOTED_HINTS[kind]}"
    # The value as a whole token: "0" inside "greater than or equal to 0.4" is not the input.
    shown = re.compile(rf"(?<![\w.]){re.escape(repr(given))}(?![\w.])")
    # A limit's bound may be the value itself ("greater than 0", given 0): shown all the same.
    bound = kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    if (
        given is not None
        and not isinstance(given, dict | list)
        and (bound or not shown.search(message))
    ):
        message += f" (got {_quoted(given)})"
    return path, message


# The manifest's types are JSON's: a quoted value is text (schema._Strict says why).
_QUOTED_HINTS = {
    "float_type": "write the number without quotes",
    "int_type": "write the number without quotes",
    "bool_type": "write true or false, without quotes (yes, no, on and off are words in YAML "
    "1.2, as editors read it)",
}


def _numeric(text: str) -> bool:
    """Whether `text`, unquoted, would have been a number (not `inf`, which YAML reads as text)."""
    return any(
        re.fullmatch(pattern, text.strip())
        for tag, pattern, _ in _CORE_SCHEMA
        if tag in ("int", "float")
    )


def _quoted(value: Any) -> str:
    """A value as the error quotes it, in YAML's words for a flag and for nothing (false and
    null, not Python's False and None): its start, when it is long (lyrics of 5,000 characters)."""
    if value is None:
        return "null"
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    if len(text) <= _QUOTE_CHARS:
        return text
    return f"{text[:_QUOTE_CHARS]}... ({len(str(value))} characters)"


def _kind(value: Any) -> str:
    """What a YAML value is, in YAML's words."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return "text" if isinstance(value, str) else "a list"


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
        "sampling families": keys(FamilySamplingSpec),
        "musicgen": keys(SamplingSpec),
        "ace-step": keys(AceStepSamplingSpec),
        "stable-audio": keys(StableAudioSamplingSpec),
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


# Listed whole in a problem up to this many: every bad reference in a manifest of 500 tracks
# listing all 500 ids made 1.5 MB of output.
LISTED_TRACKS_MAX = 10


def _no_such_track(name: str, ids: list[str]) -> str:
    """A track id nothing in the manifest has: the ids there when few, else the nearest."""
    if len(ids) <= LISTED_TRACKS_MAX:
        return f"no track {name!r} in the manifest ({', '.join(ids)})"
    close = difflib.get_close_matches(name, ids, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"no track {name!r} among the manifest's {len(ids)} tracks{hint}"


def _variation_problems(manifest: Manifest) -> list[tuple[str, str]]:
    """Every `variation_of` names a track of the manifest, and no chain of them comes back to
    where it started: the plan renders parents first."""
    parents = {track.id: track.variation_of for track in manifest.tracks}
    problems = []
    for index, track in enumerate(manifest.tracks):
        if track.variation_of is None:
            continue
        where = f"tracks[{index}].variation_of"
        if track.variation_of not in parents:
            problems.append((where, _no_such_track(track.variation_of, sorted(parents))))
            continue
        chain = [track.id]
        parent: str | None = track.variation_of
        while parent is not None and parent not in chain:
            chain.append(parent)
            parent = parents.get(parent)  # a parent naming no track is its own problem
        if parent == track.id:
            cycle = " -> ".join([*chain, track.id])
            problems.append((where, f"a cycle ({cycle}): a variation is rendered after its parent"))
    return problems


def where(field: str, lines: dict[str, int]) -> str:
    """`field (line N)`, the line of the nearest enclosing field written in the file."""
    probe = field
    while probe not in lines and (parent := re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)) != probe:
        probe = parent
    line = lines.get(probe)
    return f"{field or '(top level)'}{f' (line {line})' if line else ''}"


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; raise InputError listing every problem found."""
    return load_manifest_with_lines(path)[0]


def load_manifest_with_lines(path: Path) -> tuple[Manifest, dict[str, int]]:
    """The manifest, as load_manifest reads it, and where each of its fields starts
    (`tracks[2].duration` -> its line), for problems found after loading it (models, licences)."""
    path = Path(path)
    text = _read_text(path)
    data, lines = _parse_yaml(text, path)
    if not isinstance(data, dict):
        kind = _kind(data)
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
                f"unsupported schema version {_quoted(data['schema'])} "
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
    if manifest is not None:
        # Each setting is within its range (a repeated id or the schema's version aside, which
        # leave every track readable); whether they render together is asked next.
        problems += _variation_problems(manifest)
        problems += render_problems(manifest, path.parent)
    if problems or manifest is None:
        messages = [_with_line(field, message, lines) for field, message in problems]
        raise InputError(f"{path}: {len(messages)} problem(s) in the manifest", messages)
    return manifest, lines


def track_problems(fields: dict[str, Any]) -> tuple[Track | None, list[tuple[str, str]]]:
    """One track's fields checked as a manifest's are: the track, or each (field, problem)."""
    try:
        return Track.model_validate(fields), []
    except ValidationError as exc:
        allowed = _allowed_keys()
        return None, [_describe(error, allowed) for error in exc.errors()]


def _wide_encoding(raw: bytes) -> str | None:
    """The wide encoding the file is in, "UTF-32" or "UTF-16" (as Windows editors save
    "Unicode"): by its byte-order mark, or ASCII text with zero bytes beside each character."""
    head = raw[:64]
    zero_lanes = sum(not any(head[at::4]) for at in range(4))  # ASCII in UTF-32: three of four
    # UTF-32's little-endian mark begins with UTF-16's.
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)) or (
        len(head) >= 8 and zero_lanes >= 3
    ):
        return "UTF-32"
    zeros_beside = len(head) >= 4 and (not any(head[1::2]) or not any(head[::2]))
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or zeros_beside:
        return "UTF-16"
    return None


def _with_line(field: str, message: str, lines: dict[str, int]) -> str:
    return f"{where(field, lines)}: {message}"
