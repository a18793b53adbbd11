"""Any document given to the manifest loader validates or raises InputError, never anything else.

Hypothesis generates raw text, YAML dumped from hostile data (wrong types, deep nesting, shared
objects that PyYAML writes as anchors and aliases, control characters, huge numbers),
manifest-shaped text assembled from fragments that use anchors, merges and odd scalars, and
nearly valid manifests (with a source recording of any length and channel count) that reach
the render checks: whatever validate lets through, master's fades take.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soundtrack.errors import InputError
from soundtrack.manifest import load_manifest
from soundtrack.master import _fade
from soundtrack.resolve import resolve_tracks
from soundtrack.spec import TrackSpec

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOUNDTRACK = Path(sys.executable).with_name("soundtrack")  # the console script of this venv

# Text as a user might save it: any character but lone surrogates (not encodable as UTF-8).
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.sampled_from(["1", "true", "0x1F", "1e400", ".nan", "2024-13-45", "~", "m.yaml", "-5"]),
)


def _shared(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # The same object twice: yaml.dump writes it once with an anchor, then as an alias.
    return children.map(lambda child: [child, {"again": child}])


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(texts, st.integers(), st.booleans()), children, max_size=5),
        _shared(children),
    ),
    max_leaves=30,
)

TRACK_KEYS = [
    "id", "prompt", "source", "loop", "seed", "bpm", "key", "mood", "instruments", "model",
    "duration", "formats", "loudness", "sampling", "overlap_s", "sample_rate", "channels",
    "fade_in_ms", "fade_out_s", "loop_crossfade_ms", "wav_bit_depth", "gates",
]  # fmt: skip
tracks = st.dictionaries(st.sampled_from(TRACK_KEYS), values, max_size=8)
manifests = st.fixed_dictionaries(
    {"schema": st.one_of(st.just(1), scalars), "tracks": st.lists(tracks, max_size=4)},
    optional={
        "soundtrack": st.one_of(st.just("game"), scalars),
        "defaults": st.one_of(tracks, values),
        "storage": st.one_of(st.just("./out"), scalars),
        "expectations": st.one_of(st.just("m.yaml"), scalars),
    },
)

# Values mostly in range, so that generated manifests get past the models to resolution and the
# render checks (fades against the duration, loops against their crossfade, recordings).
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.sampled_from(["horn", "drums, 90 BPM"]),
    "source": st.just("take.wav"),
    "loop": st.booleans(),
    "seed": st.integers(0, 2**32),
    "duration": st.one_of(st.floats(0.3, 12.0), st.integers(1, 700)),
    "fade_in_ms": st.floats(0.0, 5000.0),
    "fade_out_s": st.floats(0.0, 30.0),
    "loop_crossfade_ms": st.floats(10.0, 5000.0),
    "overlap_s": st.floats(1.0, 25.0),
    "sample_rate": st.sampled_from([22050, 32000, 44100, 48000]),
    "channels": st.sampled_from([1, 2]),
    "formats": st.sampled_from([["ogg"], ["wav", "mp3"]]),
    "loudness": st.sampled_from(["console", "web", {"integrated": -16}]),
}
_TRACK_ONLY = ("prompt", "source", "loop", "seed")
plausible_tracks = st.builds(
    lambda track_id, what, settings: {"id": track_id, **what, **settings},
    st.sampled_from(["a", "b", "theme", "a-1"]),
    st.one_of(st.builds(dict, prompt=PLAUSIBLE["prompt"]), st.just({"source": "take.wav"})),
    st.fixed_dictionaries(
        {}, optional={k: v for k, v in PLAUSIBLE.items() if k not in ("prompt", "source")}
    ),
)
plausible_manifests = st.fixed_dictionaries(
    {
        "schema": st.just(1),
        "soundtrack": st.just("game"),
        "tracks": st.lists(plausible_tracks, min_size=1, max_size=3, unique_by=lambda t: t["id"]),
    },
    optional={
        "defaults": st.fixed_dictionaries(
            {}, optional={k: v for k, v in PLAUSIBLE.items() if k not in _TRACK_ONLY}
        )
    },
)
# A source recording beside the manifest: (seconds, channels) at 8 kHz.
recordings = st.tuples(st.floats(0.01, 3.0), st.integers(1, 6))

FRAGMENTS = [
    "schema: 1",
    "soundtrack: game",
    "defaults: &d {duration: 2, fade_out_s: 1.9}",
    "defaults:\n  <<: *d",
    "tracks:",
    "  - id: a\n    prompt: &p horn",
    "  - <<: *d\n    id: b\n    prompt: drums",
    "  - {id: c, prompt: *p, loop: true, duration: 0.5}",
    "    instruments: [*p, *p, *p]",
    "    gates: {seam_jump_max_ratio: .inf}",
    "    seed: true",
    "    source: m.yaml",
    "    duration: 1e400",
    "    fade_in_ms: 5000",
    "x: &x [*x]",
    "? [a, b]\n: c",
    "key: !!python/object/apply:os.system [ls]",
    "when: 2024-13-45",
    "big: 1" + "0" * 4400,
    "deep: " + "[" * 40 + "]" * 40,
    "<<: 5",
    "\t- tab",
    "  bad: indent",
    "]",
    "'unterminated",
    "\x07bell",
    "---",
    "%YAML 1.1\n---",
]
fragment_texts = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("\n".join)


def _validate(text: str, recording: tuple[float, int] | None = None) -> list[TrackSpec]:
    """What `soundtrack validate` does: load, then resolve; only InputError may come out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_text(text, encoding="utf-8")
        if recording is not None:
            seconds, channels = recording
            noise = np.random.default_rng(0).uniform(-0.1, 0.1, (round(seconds * 8000), channels))
            sf.write(Path(tmp) / "take.wav", noise, 8000)
        try:
            return resolve_tracks(load_manifest(path), path.parent)
        except InputError as error:
            assert str(error).strip(), "an InputError must say what is wrong"
            assert all(problem.strip() for problem in error.problems)
            return []


@SETTINGS
@given(texts)
def test_any_text_validates_or_raises_input_error(text: str) -> None:
    _validate(text)


@SETTINGS
@given(manifests)
def test_any_data_dumped_to_yaml_validates_or_raises_input_error(data: dict[str, Any]) -> None:
    _validate(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


@SETTINGS
@given(plausible_manifests, recordings)
def test_nearly_valid_manifests_validate_or_raise_input_error(
    data: dict[str, Any], recording: tuple[float, int]
) -> None:
    specs = _validate(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), recording)
    # What validate lets through, master's own fades take (audio as long as the track).
    for spec in specs:
        if not spec.loop and spec.duration_s <= 30:
            rate = spec.mastering.sample_rate
            audio = np.ones((1, round(spec.duration_s * rate)), np.float32)
            _fade(audio, rate, spec.mastering.fade_in_ms, spec.mastering.fade_out_s)


@SETTINGS
@given(fragment_texts)
def test_anchors_merges_and_odd_scalars_validate_or_raise_input_error(text: str) -> None:
    _validate(text)


@settings(max_examples=5, deadline=None)
@given(st.one_of(fragment_texts, manifests.map(yaml.safe_dump)).filter(str.strip))
def test_the_cli_exits_0_or_2_without_a_traceback(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_text(text, encoding="utf-8")
        result = subprocess.run(
            [str(SOUNDTRACK), "validate", str(path)], capture_output=True, text=True, check=False
        )
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
