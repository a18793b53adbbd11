"""Source separation (issue 17): the tiny Demucs through load_separator, the converter from
demucs' published checkpoint format, refusals that run nothing, the registry, residual_db, and
the two `soundtrack models` commands."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.states import get_state, load_model
from typer.testing import CliRunner

from soundtrack import separate
from soundtrack.cli import app
from soundtrack.errors import AudioError, ModelLoadError
from soundtrack.separate import (
    TINY_KWARGS,
    DemucsSeparator,
    convert_demucs,
    is_separator_folder,
    load_separator,
    make_tiny_demucs,
    register_separator,
    residual_db,
    stem_model_problem,
)
from tests.running import stopped_after_the_weights

runner = CliRunner()
SOURCES = ("drums", "bass", "other", "vocals")
RATE = 44100


@pytest.fixture(scope="module")
def tiny_demucs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_demucs(tmp_path_factory.mktemp("demucs") / "tiny")


def _mix(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((2, round(seconds * RATE)))).astype(np.float32)


def _published(path: Path, model: torch.nn.Module, **extra: Any) -> Path:
    """Save `model` as demucs' tools/export.py does (serialize_model, half=True, plus metrics),
    without omegaconf: training_args is the plain container OmegaConf.to_container returns."""
    args, kwargs = cast(tuple[tuple[Any, ...], dict[str, Any]], model._init_args_kwargs)
    package = {
        "klass": type(model),
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=True),  # type: ignore[no-untyped-call]
        "training_args": {"dset": {"segment": 11, "sources": list(SOURCES)}, "epochs": 360},
        "metrics": ({"loss": 0.1}, {"nsdr": 9.2}),
        **extra,
    }
    torch.save(package, path)
    return path


def _tiny_htdemucs(seed: int) -> HTDemucs:
    torch.manual_seed(seed)
    kwargs = dict(TINY_KWARGS)
    # Sources positionally, as an old training script might: the converter names them.
    return HTDemucs(kwargs.pop("sources"), **kwargs)  # type: ignore[no-any-return]


class _Canary:
    """Unpickling this creates a file: proof that something was run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return (os.system, (f"touch {self.path}",))


def _copy(directory: Path, to: Path) -> Path:
    shutil.copytree(directory, to)
    return to


def _edit_config(directory: Path, **changes: Any) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config, default=str))  # a date as text


# --- the tiny model through load_separator ---


def test_tiny_demucs_gives_every_source_at_the_mix_shape_and_the_same_stems_twice(
    tiny_demucs: Path,
) -> None:
    separator = load_separator(str(tiny_demucs), "cpu")
    assert separator.sources == SOURCES
    assert (separator.sample_rate, separator.channels) == (RATE, 2)
    assert separator.license == "soundtrack-tiny-random-weights"
    assert separator.revision.startswith("sha256:") and separator.model_id == str(tiny_demucs)
    assert (tiny_demucs / "model.safetensors").stat().st_size < 1_000_000
    mix = _mix(5.0)
    started = time.perf_counter()
    stems = separator.separate(mix)
    elapsed_s = time.perf_counter() - started
    assert list(stems) == list(SOURCES)
    for stem in stems.values():
        assert stem.shape == mix.shape and stem.dtype == np.float32
        assert np.isfinite(stem).all()
    again = separator.separate(mix)
    for name in SOURCES:
        np.testing.assert_array_equal(stems[name], again[name])
    assert elapsed_s < 15.0  # about 0.3 s on an idle core; generous for a loaded machine


@pytest.mark.parametrize("samples", [1, 1234, 2 * RATE + 1])
def test_any_length_comes_back_at_that_length(tiny_demucs: Path, samples: int) -> None:
    """Shorter than a segment, or one sample past it: demucs pads and trims back."""
    separator = load_separator(str(tiny_demucs), "cpu")
    mix = _mix(3.0)[:, :samples]
    assert {stem.shape for stem in separator.separate(mix).values()} == {mix.shape}


def test_a_mix_of_the_wrong_shape_is_refused(tiny_demucs: Path) -> None:
    separator = load_separator(str(tiny_demucs), "cpu")
    with pytest.raises(AudioError, match=r"must have 2 channels .* got shape \(1, 100\)"):
        separator.separate(np.zeros((1, 100), np.float32))
    with pytest.raises(AudioError, match="NaN or infinite"):
        separator.separate(np.full((2, 100), np.nan, np.float32))


# --- what is refused, and that refusing runs nothing ---


def test_an_unknown_directory_fails_fast_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        load_separator(str(missing), "cpu")
    assert time.perf_counter() - started < 5.0
    message = str(caught.value)
    assert str(missing) in message and "no such directory" in message
    assert "soundtrack models convert-demucs CHECKPOINT DIR" in message
    assert "never downloaded" in message
    with pytest.raises(ModelLoadError, match=r"htdemucs.*no such directory"):
        load_separator("htdemucs", "cpu")  # a demucs name is not fetched either


def test_a_directory_without_config_names_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no config\.json; found weights\.bin"):
        load_separator(str(tmp_path), "cpu")


@pytest.mark.parametrize(
    "class_name", ["torch.nn.Linear", "BagOfModels", "HTDemucs.__init__", "os.system"]
)
def test_a_class_outside_the_allow_list_is_refused(
    tiny_demucs: Path, tmp_path: Path, class_name: str
) -> None:
    directory = _copy(tiny_demucs, tmp_path / "model")
    _edit_config(directory, **{"class": class_name})
    with pytest.raises(ModelLoadError, match=r"only HTDemucs, HDemucs, Demucs are loaded"):
        load_separator(str(directory), "cpu")


def test_kwargs_that_do_not_fit_the_class_are_refused(tiny_demucs: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_demucs, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    _edit_config(directory, kwargs={**config["kwargs"], "no_such_argument": 1})
    with pytest.raises(ModelLoadError, match="do not fit demucs' HTDemucs"):
        load_separator(str(directory), "cpu")
    _edit_config(directory, kwargs={**config["kwargs"], "segment": {"_type": "fraction"}})
    with pytest.raises(ModelLoadError, match="malformed fraction"):
        load_separator(str(directory), "cpu")
    _edit_config(directory, kwargs={**config["kwargs"], "channels": 8})
    with pytest.raises(ModelLoadError, match=r"model\.safetensors does not fit HTDemucs"):
        load_separator(str(directory), "cpu")


@pytest.mark.parametrize(
    "declared",
    [
        {"sources": ["bass", "drums", "other", "vocals"]},
        {"samplerate": 48000},
        {"audio_channels": 1},
    ],
    ids=["sources swapped", "another rate", "mono"],
)
def test_a_config_declaring_other_than_its_model_separates_is_refused(
    tiny_demucs: Path, tmp_path: Path, declared: dict[str, Any]
) -> None:
    """The build names stems and plans rates from the config: swapped sources would publish
    the drums as the bass."""
    directory = _copy(tiny_demucs, tmp_path / "model")
    _edit_config(directory, **declared)
    with pytest.raises(ModelLoadError, match=r"model 0 separates .* config\.json declares"):
        load_separator(str(directory), "cpu")


@pytest.mark.parametrize(
    ("numerator", "denominator"), [(1, 0), (1e400, 1)], ids=["by zero", "infinite"]
)
def test_a_fraction_no_number_can_be_is_a_malformed_config(
    tiny_demucs: Path, tmp_path: Path, numerator: float, denominator: int
) -> None:
    """A zero denominator or an infinite numerator ended validate in a traceback, exit 1."""
    directory = _copy(tiny_demucs, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    segment = {"_type": "fraction", "numerator": numerator, "denominator": denominator}
    _edit_config(directory, kwargs={**config["kwargs"], "segment": segment})
    assert "malformed fraction" in (stem_model_problem(str(directory)) or "")


@pytest.mark.parametrize(
    "sources",
    [["drums", "bass", "other", "../../../escaped"], ["drums", "drums"], [], "drums", ["Drums"]],
    ids=["a path", "twice", "none", "a string", "capitals"],
)
def test_sources_that_are_no_names_are_refused(
    tiny_demucs: Path, tmp_path: Path, sources: Any
) -> None:
    """A source is part of a file name: '../../x' in a config wrote x.wav outside the cache."""
    directory = _copy(tiny_demucs, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    _edit_config(directory, sources=sources, kwargs={**config["kwargs"], "sources": sources})
    said = r"config\.json 'sources' must list distinct source names"
    assert re.search(said, stem_model_problem(str(directory)) or "")
    with pytest.raises(ModelLoadError, match=said):
        load_separator(str(directory), "cpu")


def test_a_config_nested_past_any_parser_is_unreadable(tiny_demucs: Path, tmp_path: Path) -> None:
    """JSON nested 100,000 deep raised RecursionError out of validate."""
    directory = _copy(tiny_demucs, tmp_path / "model")
    (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "unreadable config.json" in (stem_model_problem(str(directory)) or "")
    assert not is_separator_folder(directory)


def test_validate_refuses_a_stem_the_model_does_not_separate(
    tiny_demucs: Path, tmp_path: Path
) -> None:
    """A two-source model asked for drums passed validate; the build then rejected the stems
    with a warning and exit 0, after rendering and separating."""
    kwargs = {**TINY_KWARGS, "sources": ["vocals", "other"]}
    two = HTDemucs(**kwargs).state_dict()
    directory = separate._write_layout(tmp_path / "two", [("HTDemucs", kwargs, two)], licence="MIT")
    mix = 0.1 * np.sin(np.arange(3 * 44100) / 10.0)
    sf.write(tmp_path / "mix.wav", np.stack([mix, mix]).T, 44100)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "schema: 1\nsoundtrack: s\nstorage: ./out\ntracks:\n  - id: boss\n    source: mix.wav\n"
        f"    stems: [vocals, drums]\n    stem_model: {directory}\n"
    )
    result = runner.invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "tracks[0].stems (line 7): track boss: drums not among the sources" in said, said
    assert "(vocals, other)" in said


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_pickled_weights_are_never_loaded_and_nothing_runs(
    tiny_demucs: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    # 1. A .th pickle beside config.json instead of model.safetensors.
    th = _copy(tiny_demucs, tmp_path / "th")
    (th / "model.safetensors").unlink()
    torch.save({"state": _Canary(canary)}, th / "model.th")
    with pytest.raises(
        ModelLoadError, match=r"no model\.safetensors; model\.th would be unpickled"
    ):
        load_separator(str(th), "cpu")
    # 2. The same pickle under the safetensors name.
    disguised = _copy(tiny_demucs, tmp_path / "disguised")
    shutil.copy(th / "model.th", disguised / "model.safetensors")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_separator(str(disguised), "cpu")
    # 3. A config naming a non-safetensors weights file.
    named = _copy(tiny_demucs, tmp_path / "named")
    shutil.copy(th / "model.th", named / "model.th")
    entry = {"class": "HTDemucs", "kwargs": separate._encode(TINY_KWARGS, "kwargs")}
    _edit_config(named, models=[{**entry, "file": "model.th"}], weights=None, segment=None)
    with pytest.raises(ModelLoadError, match=r"weights file 'model\.th'; only a \.safetensors"):
        load_separator(str(named), "cpu")
    # 4. The converter reads it with the weights-only unpickler, which refuses os.system.
    with pytest.raises(ModelLoadError, match=r"names posix\.system, which torch's weights-only"):
        convert_demucs(th / "model.th", tmp_path / "converted")
    # 5. A plain pickle, as older torch.save wrote, or protocol 4 (which the reader lacks).
    (tmp_path / "plain.th").write_bytes(pickle.dumps({"klass": _Canary(canary)}, protocol=2))
    with pytest.raises(ModelLoadError, match=r"names posix\.system"):
        convert_demucs(tmp_path / "plain.th", tmp_path / "converted")
    (tmp_path / "p4.th").write_bytes(pickle.dumps({"klass": _Canary(canary)}, protocol=4))
    with pytest.raises(ModelLoadError, match=r"weights-only reader can read \(Unsupported opera"):
        convert_demucs(tmp_path / "p4.th", tmp_path / "converted")
    assert not canary.exists()
    assert not (tmp_path / "converted" / "config.json").exists()


def test_the_converter_refuses_what_it_cannot_read_without_running_code(tmp_path: Path) -> None:
    model = _tiny_htdemucs(0)
    # An argument whose class torch does not trust (a Path in the training arguments).
    _published(tmp_path / "path.th", model, training_args={"root": Path("/data")})
    with pytest.raises(ModelLoadError, match=r"names pathlib\.PosixPath.*could run code"):
        convert_demucs(tmp_path / "path.th", tmp_path / "out")
    # diffq-quantized weights (mdx_q, mdx_extra_q).
    _published(tmp_path / "q.th", model)
    package = torch.load(tmp_path / "q.th", weights_only=False)
    package["state"] = {"__quantized": True}
    torch.save(package, tmp_path / "q.th")
    with pytest.raises(ModelLoadError, match="quantized with diffq"):
        convert_demucs(tmp_path / "q.th", tmp_path / "out")
    # Not a checkpoint at all.
    (tmp_path / "text.th").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a torch checkpoint"):
        convert_demucs(tmp_path / "text.th", tmp_path / "out")
    torch.save({"state": {}}, tmp_path / "dict.th")
    with pytest.raises(ModelLoadError, match="not a Demucs checkpoint"):
        convert_demucs(tmp_path / "dict.th", tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _Calls:
    """Pickles as a call of `function` with `args`, as a crafted checkpoint may hold."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.call = (function, args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call


class _Bare:
    """Pickles as `cls.__new__(cls)` with attributes (NEWOBJ, BUILD)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # the pickler asks that __newobj__'s class be the object's
        return self.cls

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        import copyreg

        return (copyreg.__newobj__, (self.cls,), {"sources": ["drums"]})


@pytest.mark.timeout(60)  # 10**900000000 as a fraction took the converter forever
@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"klass": _Calls(HTDemucs, ["drums"])}, r"builds a HTDemucs from its own arguments"),
        ({"klass": _Bare(HTDemucs)}, r"not a torch checkpoint \(TypeError"),
        ({"klass": "HTDemucs"}, r"'klass' is a str, not a Demucs class"),
        ({"args": 5}, r"its 'args' must be a list and its 'kwargs' a dict"),
        ({"kwargs": {"segment": _Calls(Fraction, "1e900000000")}}, r"is no segment's length"),
        ({"kwargs": {"segment": _Calls(Fraction, 10**400, 1)}}, r"is no segment's length"),
        ({"args": (["../../x"],)}, r"sources \['\.\./\.\./x'\] are not distinct source names"),
        ({"kwargs": {"samplerate": "x"}}, r"its samplerate is 'x', not a whole number above 0"),
    ],
    ids=[
        "a class built",
        "a class made bare",
        "no class",
        "args",
        "1e900000000",
        "huge",
        "path",
        "rate",
    ],
)
def test_a_checkpoint_that_builds_what_it_names_is_refused_before_anything_is_built(
    tmp_path: Path, changes: dict[str, Any], said: str
) -> None:
    """The reader calls what it allows with the file's arguments: a checkpoint built an HTDemucs
    of its own sizes (4.9 GB and counting), a Fraction of 10**900000000 never ended, a class
    made bare ended in a traceback."""
    model = _tiny_htdemucs(0)
    args, kwargs = cast(tuple[tuple[Any, ...], dict[str, Any]], model._init_args_kwargs)
    changes = {"args": args, **changes, "kwargs": {**kwargs, **changes.get("kwargs", {})}}
    _published(tmp_path / "crafted.th", model, **changes)
    with pytest.raises(ModelLoadError, match=said):
        convert_demucs(tmp_path / "crafted.th", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_segment_written_as_text_or_as_two_numbers_converts(tmp_path: Path) -> None:
    """Python before 3.12 pickles a Fraction as its text, later ones as two numbers."""
    model = _tiny_htdemucs(0)
    args, kwargs = cast(tuple[tuple[Any, ...], dict[str, Any]], model._init_args_kwargs)
    for name, segment in (("text", _Calls(Fraction, "39/5")), ("two", _Calls(Fraction, 39, 5))):
        _published(tmp_path / f"{name}.th", model, args=args, kwargs={**kwargs, "segment": segment})
        config = json.loads(
            (convert_demucs(tmp_path / f"{name}.th", tmp_path / name) / "config.json").read_text()
        )
        assert config["kwargs"]["segment"] == {
            "_type": "fraction",
            "numerator": 39,
            "denominator": 5,
        }


# --- the converter ---


def _trusted(path: Path) -> HTDemucs:
    """demucs' own loader, on a file this test wrote (never on anything else)."""
    model: HTDemucs = load_model(torch.load(path, "cpu", weights_only=False))  # type: ignore[no-untyped-call]
    return model


def _reference(model: torch.nn.Module, mix: np.ndarray) -> dict[str, np.ndarray]:
    """demucs' own loading of the trusted file, run the way our separator runs."""
    wrapped = DemucsSeparator(model.eval(), model_id="ref", revision="", license="", device="cpu")
    return wrapped.separate(mix)


def test_a_published_checkpoint_converts_to_the_same_model(tmp_path: Path) -> None:
    checkpoint = _published(tmp_path / "955717e8-8726e21a.th", _tiny_htdemucs(1))
    directory = convert_demucs(checkpoint, tmp_path / "htdemucs")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    assert config["class"] == "HTDemucs" and config["licence"] == "MIT"
    assert config["kwargs"]["sources"] == list(SOURCES)  # given positionally, written by name
    assert config["kwargs"]["segment"] == {"_type": "fraction", "numerator": 2, "denominator": 1}
    assert config["converted_from"]["file"] == "955717e8-8726e21a.th"
    separator = load_separator(str(directory), "cpu")
    assert separator.license == "MIT"
    trusted = _trusted(checkpoint)
    mix = _mix(3.0, seed=1)
    expected = _reference(trusted, mix)
    stems = separator.separate(mix)
    for name in SOURCES:
        np.testing.assert_array_equal(stems[name], expected[name])


def test_a_bag_of_models_converts_with_its_weights(tmp_path: Path) -> None:
    repo = tmp_path / "repo"  # demucs' --repo layout: the bag's yaml beside its .th files
    repo.mkdir()
    _published(repo / "aaaa1111-0f06f20e.th", _tiny_htdemucs(1))
    _published(repo / "bbbb2222.th", _tiny_htdemucs(2))
    weights = [[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5]]
    (repo / "bag.yaml").write_text(f"models: ['aaaa1111', 'bbbb2222']\nweights: {weights}\n")
    directory = convert_demucs(repo / "bag.yaml", tmp_path / "bag")
    config = json.loads((directory / "config.json").read_text())
    assert [m["file"] for m in config["models"]] == ["model-0.safetensors", "model-1.safetensors"]
    assert config["weights"] == weights
    separator = load_separator(str(directory), "cpu")
    trusted = BagOfModels(
        [_trusted(repo / "aaaa1111-0f06f20e.th"), _trusted(repo / "bbbb2222.th")], weights
    )
    mix = _mix(2.5, seed=2)
    expected = _reference(trusted, mix)
    stems = separator.separate(mix)
    for name in SOURCES:
        np.testing.assert_array_equal(stems[name], expected[name])
    (repo / "missing.yaml").write_text("models: ['cccc3333']\n")
    with pytest.raises(ModelLoadError, match=r"'cccc3333' needs one file cccc3333\.th"):
        convert_demucs(repo / "missing.yaml", tmp_path / "missing")


@pytest.mark.parametrize(
    ("bag", "said"),
    [
        ("weights: [[1, 1, 1]]", r"'weights' must be 2 rows \(one per model\) of 4 numbers"),
        ("weights: 2020-01-01", r"'weights' must be 2 rows"),
        ("weights: [[1, 0, 1, .nan], [0, 1, 1, 1]]", r"'weights' must be 2 rows"),
        ("weights: [[1, 0, 0, 1], [0, 1, 0, 1]]", r"'weights' must sum above 0 for every source"),
        ("segment: abc", r"'segment' must be a number of seconds above 0 or null, got 'abc'"),
        ("segment: -1", r"'segment' must be a number of seconds above 0"),
    ],
    ids=["short rows", "a date", "nan", "a source unweighed", "text", "negative"],
)
def test_a_bag_demucs_could_not_build_is_refused_when_converted_and_when_validated(
    tmp_path: Path, bag: str, said: str
) -> None:
    """Weights of the wrong shape converted (exit 0) and passed validate, failing only when a
    build loaded them; a segment of text ended the converter in a traceback."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _published(repo / "aaaa1111.th", _tiny_htdemucs(1))
    _published(repo / "bbbb2222.th", _tiny_htdemucs(2))
    (repo / "bag.yaml").write_text(f"models: ['aaaa1111', 'bbbb2222']\n{bag}\n")
    with pytest.raises(ModelLoadError, match=said):
        convert_demucs(repo / "bag.yaml", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    (repo / "good.yaml").write_text("models: ['aaaa1111', 'bbbb2222']\n")
    directory = convert_demucs(repo / "good.yaml", tmp_path / "bag")
    import yaml

    _edit_config(directory, **yaml.safe_load(bag))
    assert re.search(said, stem_model_problem(str(directory)) or "")
    with pytest.raises(ModelLoadError, match=said):
        load_separator(str(directory), "cpu")


# --- the registry ---


class _FakeSeparator:
    sources = ("melody", "rest")
    sample_rate = 48000
    channels = 2
    model_id = "fake-split"
    revision = "1"
    license = "MIT"

    def __init__(self, device: str) -> None:
        self.device = device

    def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        return {"melody": audio / 2, "rest": audio / 2}


def test_a_registered_separator_is_returned_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(separate, "SEPARATORS", {})
    register_separator("fake-split", _FakeSeparator)
    found = load_separator("fake-split", "cuda:3")
    assert isinstance(found, _FakeSeparator) and found.device == "cuda:3"
    mix = _mix(0.1)
    assert residual_db(mix, list(found.separate(mix).values())) == math.inf


# --- residual_db ---


def test_residual_db_is_the_energy_ratio_of_mix_to_residual() -> None:
    mix = _mix(1.0)
    assert residual_db(mix, [mix]) == math.inf  # exact: +inf, not a large number
    assert residual_db(mix, [0.9 * mix]) == pytest.approx(20.0)  # residual 0.1 of the mix
    assert residual_db(mix, [0.5 * mix, 0.49 * mix]) == pytest.approx(40.0)
    assert residual_db(mix, [np.zeros_like(mix)]) == pytest.approx(0.0)
    silent = np.zeros_like(mix)
    assert residual_db(silent, [silent, silent]) == math.inf
    assert residual_db(silent, [mix]) == -math.inf
    with pytest.raises(ValueError, match=r"stem 1 has shape \(2, 10\)"):
        residual_db(mix, [mix, mix[:, :10]])
    assert separate.SUM_RESIDUAL_MIN_DB == 25.0


# --- the commands ---


def test_make_tiny_demucs_from_the_command_line(tmp_path: Path) -> None:
    directory = tmp_path / "cli-tiny"
    result = runner.invoke(app, ["models", "make-tiny", str(directory), "--family", "demucs"])
    assert result.exit_code == 0, result.output
    assert "tiny random-weight HTDemucs" in result.stdout
    stems = load_separator(str(directory), "cpu").separate(_mix(0.5))
    assert list(stems) == list(SOURCES)
    result = runner.invoke(app, ["models", "make-tiny", str(directory), "--family", "spleeter"])
    assert result.exit_code == 2 and "bark or demucs, got 'spleeter'" in result.stderr


def test_convert_demucs_from_the_command_line(tmp_path: Path) -> None:
    checkpoint = _published(tmp_path / "955717e8-8726e21a.th", _tiny_htdemucs(3))
    directory = tmp_path / "converted"
    result = runner.invoke(app, ["models", "convert-demucs", str(checkpoint), str(directory)])
    assert result.exit_code == 0, result.output
    assert load_separator(str(directory), "cpu").license == "MIT"
    again = [str(checkpoint), str(directory), "--licence", "studio"]
    assert runner.invoke(app, ["models", "convert-demucs", *again]).exit_code == 0, "rewritten"
    assert load_separator(str(directory), "cpu").license == "studio"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = runner.invoke(
        app, ["models", "convert-demucs", str(checkpoint), str(tmp_path / "mine")]
    )
    assert result.exit_code == 2 and "holds no demucs model" in result.stderr, result.output
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "bad.th").write_text("hello")
    result = runner.invoke(app, ["models", "convert-demucs", str(tmp_path / "bad.th"), "x"])
    assert result.exit_code == 2 and "not a torch checkpoint" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("there", [False, True], ids=["a new folder", "an empty folder"])
def test_a_conversion_stopped_midway_leaves_nothing_in_the_way_of_the_next(
    tmp_path: Path, there: bool
) -> None:
    """Stopped after the weights and before config.json, convert-demucs left a folder holding
    model.safetensors alone, and refused to write over it when run again (exit 2)."""
    checkpoint = _published(tmp_path / "955717e8-8726e21a.th", _tiny_htdemucs(3))
    if there:
        (tmp_path / "converted").mkdir()
    args = ["models", "convert-demucs", str(checkpoint), str(tmp_path / "converted")]
    stopped = stopped_after_the_weights(*args)
    assert stopped.returncode == 130, stopped.stderr
    if there:
        assert list((tmp_path / "converted").iterdir()) == []
    else:
        assert not (tmp_path / "converted").exists()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_separator(str(tmp_path / "converted"), "cpu").license == "MIT"


# --- cheap to import; the copied constant stays in sync ---


def test_importing_the_module_imports_neither_torch_nor_demucs() -> None:
    code = "import sys, soundtrack.separate; print(sorted({'torch', 'demucs'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_tiny_licence_is_the_other_tiny_models_licence() -> None:
    source = Path(__file__).parents[2].joinpath("soundtrack/models/tiny.py").read_text()
    found = re.search(r'^TINY_LICENSE = "([^"]+)"', source, re.MULTILINE)
    assert found is not None and found.group(1) == separate.TINY_LICENSE
