"""Source separation for stems (issue 17): a mix in, one signal per source out, each the mix's
exact shape. Demucs (MIT) is the real separator; weights are never downloaded.

`load_separator(stem_model, device)` finds a separator: a name given to `register_separator`
(tests register fakes), else a local directory holding a Demucs model in this layout:

    DIR/config.json        {"format": "soundtrack-demucs", "class": "HTDemucs",
                            "kwargs": {...the class's constructor arguments, plain JSON...},
                            "sources": ["drums", "bass", "other", "vocals"],
                            "samplerate": 44100, "audio_channels": 2, "licence": "MIT",
                            "converted_from": {"file": "955717e8-8726e21a.th", "sha256": ...}}
    DIR/model.safetensors  the model's state dict (float16 as published, or float32)

A bag of models (htdemucs_ft: one fine-tuned model per source, averaged with a weights matrix)
lists its members instead of "class" and "kwargs", with the bag's matrix and segment:

    DIR/config.json        {..., "models": [{"class": "HTDemucs", "kwargs": {...},
                                             "file": "model-0.safetensors"}, ...],
                            "weights": [[1, 0, 0, 0], ...], "segment": null}
    DIR/model-0.safetensors, DIR/model-1.safetensors, ...

A fraction (HTDemucs' `segment`, 39/5 s) is written {"_type": "fraction", "numerator": 39,
"denominator": 5}, as demucs' own Hugging Face export writes it. Only HTDemucs, HDemucs and
Demucs are instantiated, from plain JSON arguments; weights are read from safetensors only, so
loading a model never unpickles anything. `convert_demucs` turns a published checkpoint (a
pickle) into this layout once, reading it with torch's weights-only unpickler, which refuses any
class but Demucs' own three and fractions; `make_tiny_demucs` writes a tiny random-weight
HTDemucs (noise, not stems) for tests.

torch and demucs are imported inside the functions that need them: importing this module is cheap.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import math
import pickle
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import numpy as np

from soundtrack.errors import AudioError, ModelLoadError
from soundtrack.licences import UNKNOWN, card_licence
from soundtrack.manifest import load_yaml
from soundtrack.paths import printable, user_path

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEMUCS_CLASSES",
    "SEPARATORS",
    "SOURCE_NAME",
    "SUM_RESIDUAL_MIN_DB",
    "DemucsSeparator",
    "Separator",
    "convert_demucs",
    "is_source_name",
    "load_separator",
    "make_tiny_demucs",
    "register_separator",
    "residual_db",
]

FORMAT = "soundtrack-demucs"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
DEMUCS_CLASSES = ("HTDemucs", "HDemucs", "Demucs")  # the only classes ever instantiated
# A source's name, as demucs' `drums` or `guitar`: it becomes part of file names.
SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
OVERLAP = 0.25  # between segments, as demucs' own command line runs
SUM_RESIDUAL_MIN_DB = 25.0  # provisional: the stems must sum to the mix within this (residual_db)
# Same as soundtrack.models.tiny.TINY_LICENSE (importing that module costs transformers' import).
TINY_LICENSE = "soundtrack-tiny-random-weights"
TINY_SOURCES = ("drums", "bass", "other", "vocals")
# A tiny HTDemucs with the real one's structure (STFT of 4096, 4 layers, a cross-transformer)
# and narrow layers: 92k parameters, 2 s segments.
TINY_KWARGS: dict[str, Any] = {
    "sources": list(TINY_SOURCES),
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": Fraction(2),
    "channels": 4,
    "growth": 2,
    "nfft": 4096,
    "depth": 4,
    "t_layers": 1,
    "t_heads": 2,
    "t_hidden_scale": 1.0,
    "dconv_comp": 2,
}


class Separator(Protocol):
    """Splits a mix into its sources. `separate` takes float32 (channels, samples) at
    `sample_rate` and returns every source in `sources`, each of exactly that shape."""

    # Read-only: a plain attribute or a property satisfies each (a fake's tuple of two too).
    @property
    def sources(self) -> tuple[str, ...]: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def channels(self) -> int: ...
    @property
    def model_id(self) -> str: ...  # for the lock, as a generator's
    @property
    def revision(self) -> str: ...
    @property
    def license(self) -> str: ...

    def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]: ...


SEPARATORS: dict[str, Callable[[str], Separator]] = {}  # name -> factory(device)


def register_separator(name: str, factory: Callable[[str], Separator]) -> None:
    """Make `load_separator(name, device)` return `factory(device)` (a fake, in tests)."""
    if not name:
        raise ValueError("a separator's name must not be empty")
    SEPARATORS[name] = factory


def load_separator(stem_model: str, device: str | None) -> Separator:
    """The separator named `stem_model`: a registered one, else the Demucs model in the local
    directory `stem_model` (see the module docstring); ModelLoadError fast, never a download."""
    factory = SEPARATORS.get(stem_model)
    if factory is not None:
        return factory(device or "auto")
    directory = user_path(stem_model)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.is_file() else "no such directory"
        raise ModelLoadError(
            f"stem_model {stem_model!r}: {what} ({directory.absolute()}) and no separator "
            f"registered under that name; {how_to_provide_demucs()}"
        )
    from soundtrack.models.device import resolve_device
    from soundtrack.models.source import keep_fingerprints

    separator = _load_demucs(directory.resolve(), resolve_device(device))
    keep_fingerprints()
    return separator


def stem_model_problem(stem_model: str) -> str | None:
    """Why `stem_model` cannot be loaded, found without reading its weights: its config, the
    classes it names built on torch's meta device, and its weights' headers; None when it can."""
    if stem_model in SEPARATORS:
        return None
    directory = user_path(stem_model)
    if not (directory / CONFIG).is_file():
        return (
            f"stem_model {stem_model!r} is not a separation model's directory (no {CONFIG} in "
            f"{directory.absolute()}); {how_to_provide_demucs()}"
        )
    from soundtrack.models.source import safetensors_problem  # it imports this module

    try:
        config = _read_config(directory)
        members = _members(directory, config)
    except ModelLoadError as error:
        return str(error)
    for index, member in enumerate(members):
        try:
            path = _weights_file(directory, member)
        except ModelLoadError as error:
            return str(error)
        problem = safetensors_problem(path)
        if problem:
            return f"stem_model {stem_model!r}: {member.file} is not safetensors ({problem})"
        try:
            _fits(directory, config, index, member)
        except ModelLoadError as error:
            return str(error)
    return None


def _fits(directory: Path, config: Mapping[str, Any], index: int, member: _Member) -> None:
    """ModelLoadError unless `member` loads as the config declares it, found on torch's meta
    device (no weights read): its file holds its class's tensors, and the declared sources."""
    import torch
    from safetensors import SafetensorError, safe_open

    with torch.device("meta"):
        model = _built(directory, member)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    try:
        with safe_open(str(_weights_file(directory, member)), framework="pt") as weights:
            # safe_open's handle has keys() and no iteration.
            found = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: {member.file} is not a readable safetensors file "
            f"({error})"
        ) from error
    reshaped = [
        f"{name} {found[name]}, not {expected[name]}"
        for name in sorted(expected.keys() & found.keys())
        if expected[name] != found[name]
    ]
    unlike = [
        f"{len(names)} {what}, e.g. {names[0]}"
        for names, what in (
            (sorted(expected.keys() - found.keys()), "missing"),
            (sorted(found.keys() - expected.keys()), "unexpected"),
            (reshaped, "of another shape"),
        )
        if names
    ]
    if unlike:
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: {member.file} does not fit {member.class_name} "
            f"with the kwargs in {CONFIG} (tensors {'; '.join(unlike)})"
        )
    _declared_as(directory, config, index, model)


def _declared_as(
    directory: Path, config: Mapping[str, Any], index: int, model: torch.nn.Module
) -> None:
    """The member separates what the config declares (the build plans stems from the config)."""
    described = (
        tuple(getattr(model, "sources", ())),
        getattr(model, "samplerate", None),
        getattr(model, "audio_channels", None),
    )
    declared = (
        tuple(config.get("sources") or ()),
        config.get("samplerate"),
        config.get("audio_channels"),
    )
    if described != declared:
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: model {index} separates {described[0]} at "
            f"{described[1]} Hz, {described[2]} channels; {CONFIG} declares {declared[0]} at "
            f"{declared[1]} Hz, {declared[2]} channels"
        )


def stem_model_licence(stem_model: str) -> str:
    """The licence of a stem model's weights, read without loading them: its model card's
    `license:`, else its config.json's "licence", else unknown (a registered separator too)."""
    directory = user_path(stem_model)
    found = card_licence(directory / "README.md")
    if found:
        return found
    licence = (_config_or_none(directory) or {}).get("licence")
    named = isinstance(licence, str) and licence.strip().casefold() not in ("", UNKNOWN)
    return str(licence).strip() if named else UNKNOWN


def stem_model_sources(directory: Path) -> tuple[str, ...]:
    """The sources a separator folder's config names; () when it names none it can read."""
    sources = (_config_or_none(directory) or {}).get("sources")
    if not isinstance(sources, list):
        return ()
    return tuple(source for source in sources if isinstance(source, str))


def is_separator_folder(directory: Path) -> bool:
    """Whether `directory` holds a model in this module's layout (its config.json says so)."""
    return (_config_or_none(directory) or {}).get("format") == FORMAT


def _config_or_none(directory: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((directory / CONFIG).read_text())
    # ValueError: bad JSON or bytes that are not UTF-8; RecursionError: JSON nested too deep.
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def how_to_provide_demucs() -> str:
    """The ways to make a Demucs model available, for error messages."""
    return (
        f"give a directory holding {CONFIG} and {WEIGHTS}, written once from a published "
        f"Demucs checkpoint (e.g. htdemucs, 955717e8-8726e21a.th) by "
        f"`soundtrack models convert-demucs CHECKPOINT DIR`; weights are never downloaded; "
        f"for smoke tests, `soundtrack models make-tiny DIR --family demucs` writes a tiny "
        f"random-weight one"
    )


# --- loading a directory ---


@dataclass(frozen=True)
class _Member:
    """One model of a directory: its class, constructor arguments and weights file."""

    class_name: str
    kwargs: dict[str, Any]
    file: str


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    if not path.is_file():
        found = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: not a Demucs model directory (no {CONFIG}; "
            f"found {', '.join(found) or 'nothing'}); {how_to_provide_demucs()}"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # not UTF-8, not JSON, too deep
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: unreadable {CONFIG} ({error})"
        ) from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: {CONFIG} must have format {FORMAT!r}, got {got!r}; "
            f"{how_to_provide_demucs()}"
        )
    if not _source_names(config.get("sources")):
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: {CONFIG} 'sources' must list distinct source "
            f"names (lower-case letters, digits and _, as demucs' drums or bass), got "
            f"{printable(repr(config.get('sources')))[:200]}"
        )
    return config


def is_source_name(name: object) -> bool:
    """Whether `name` can be a source's (SOURCE_NAME: it becomes part of file names)."""
    return isinstance(name, str) and SOURCE_NAME.fullmatch(name) is not None


def _source_names(sources: object) -> bool:
    """Whether `sources` is a non-empty list (or tuple) of distinct source names."""
    return (
        isinstance(sources, list | tuple)
        and bool(sources)
        and all(map(is_source_name, sources))
        and len(set(sources)) == len(sources)
    )


def _members(directory: Path, config: Mapping[str, Any]) -> list[_Member]:
    """The models a config names, each checked against the allow-list and its file's name."""
    where = f"stem_model {str(directory)!r}"
    if "models" in config:
        entries = config["models"]
        if not isinstance(entries, list) or not entries:
            raise ModelLoadError(f"{where}: {CONFIG} 'models' must be a non-empty list")
    else:
        entries = [{"class": config.get("class"), "kwargs": config.get("kwargs"), "file": WEIGHTS}]
    members = []
    for index, entry in enumerate(entries):
        name = entry.get("class") if isinstance(entry, dict) else None
        kwargs = entry.get("kwargs") if isinstance(entry, dict) else None
        file = entry.get("file") if isinstance(entry, dict) else None
        if name not in DEMUCS_CLASSES:
            raise ModelLoadError(
                f"{where}: model {index} has class {name!r}; only {', '.join(DEMUCS_CLASSES)} "
                f"are loaded (never other code)"
            )
        if not isinstance(kwargs, dict):
            raise ModelLoadError(f"{where}: model {index} ({name}) has no 'kwargs' object")
        if (
            not isinstance(file, str)
            or Path(file).name != file
            or not file.endswith(".safetensors")
        ):
            raise ModelLoadError(
                f"{where}: model {index} ({name}) has weights file {file!r}; only a "
                f".safetensors file in the directory is read (never a pickle)"
            )
        try:
            decoded = _decode(kwargs)
        except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as error:
            raise ModelLoadError(
                f"{where}: model {index} ({name}) has a malformed fraction in its kwargs "
                f"({type(error).__name__}: {error}); write {{'_type': 'fraction', "
                f"'numerator': N, 'denominator': D}}"
            ) from error
        members.append(_Member(name, decoded, file))
    if "models" in config:
        problem = _bag_problem(
            config.get("weights"), config.get("segment"), len(members), len(config["sources"])
        )
        if problem:
            raise ModelLoadError(f"{where}: {problem}")
    return members


def _bag_problem(weights: object, segment: object, models: int, sources: int) -> str | None:
    """Why a bag's weights or segment are not what demucs' BagOfModels takes: one row per model
    of one number per source, every source weighed in; a segment of seconds or null."""
    if weights is not None:
        rows = weights if isinstance(weights, list) else []
        if len(rows) != models or not all(
            isinstance(row, list) and len(row) == sources and all(map(_finite, row)) for row in rows
        ):
            return (
                f"the bag's 'weights' must be {models} rows (one per model) of {sources} numbers "
                f"(one per source) or null, got {printable(repr(weights))[:200]}"
            )
        # demucs divides each source by its weights' sum.
        if any(sum(column) <= 0 for column in zip(*rows, strict=True)):
            return f"the bag's 'weights' must sum above 0 for every source, got {weights}"
    if segment is not None and not (_finite(segment) and segment > 0):
        return (
            f"the bag's 'segment' must be a number of seconds above 0 or null, got "
            f"{printable(repr(segment))[:200]}"
        )
    return None


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _decode(value: Any) -> Any:
    """Plain JSON, with demucs' tagged fractions turned back into Fraction."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            return Fraction(int(value["numerator"]), int(value["denominator"]))
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _encode(value: Any, name: str) -> Any:
    """A constructor argument as plain JSON (fractions tagged); refuse anything else."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelLoadError(f"argument {name!r} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, list | tuple):
        return [_encode(item, name) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _encode(item, f"{name}.{key}") for key, item in value.items()}
    raise ModelLoadError(
        f"argument {name!r} is a {type(value).__name__}; only plain data (numbers, strings, "
        f"lists, dicts, fractions) is written to {CONFIG}"
    )


def _classes() -> dict[str, type[torch.nn.Module]]:
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return {"HTDemucs": HTDemucs, "HDemucs": HDemucs, "Demucs": Demucs}


def _weights_file(directory: Path, member: _Member) -> Path:
    """The member's weights file; ModelLoadError naming any pickle lying there instead."""
    path = directory / member.file
    if not path.is_file():
        others = sorted(
            p.name
            for p in directory.iterdir()
            if p.suffix in (".th", ".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
        )
        hint = (
            f"; {', '.join(others)} would be unpickled (it could run code) and is never "
            f"loaded: convert a published checkpoint with `soundtrack models convert-demucs`"
            if others
            else ""
        )
        raise ModelLoadError(f"stem_model {str(directory)!r}: no {member.file}{hint}")
    return path


def _load_member(directory: Path, member: _Member) -> torch.nn.Module:
    """Instantiate an allow-listed class from plain arguments, then read its safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"stem_model {str(directory)!r}"
    path = _weights_file(directory, member)
    model = _built(directory, member)
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"{where}: {member.file} is not a readable safetensors file ({error})"
        ) from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(
            f"{where}: {member.file} does not fit {member.class_name} with the kwargs in "
            f"{CONFIG} ({str(error).splitlines()[0]})"
        ) from error
    return model


def _built(directory: Path, member: _Member) -> torch.nn.Module:
    """An allow-listed class built from its plain arguments, with its initial weights."""
    try:
        return _classes()[member.class_name](**member.kwargs)
    # RuntimeError, MemoryError: sizes no tensor can have (negative, overflowing, too large).
    except (
        TypeError,
        ValueError,
        AssertionError,
        ArithmeticError,
        RuntimeError,
        MemoryError,
    ) as error:
        raise ModelLoadError(
            f"stem_model {str(directory)!r}: {member.class_name}(**kwargs) fails "
            f"({type(error).__name__}: {error}); the kwargs in {CONFIG} do not fit demucs' "
            f"{member.class_name}"
        ) from error


def _load_demucs(directory: Path, device: str) -> DemucsSeparator:
    from demucs.apply import BagOfModels

    from soundtrack.models.device import set_cpu_threads
    from soundtrack.models.source import directory_fingerprint

    config = _read_config(directory)
    members = _members(directory, config)
    # Built on the meta device first: kwargs asking for gigabytes are refused before any are
    # taken, and each member separates what the config declares.
    for index, member in enumerate(members):
        _fits(directory, config, index, member)
    models = [_load_member(directory, member) for member in members]
    model: torch.nn.Module
    if "models" in config:
        model = BagOfModels(models, config.get("weights"), config.get("segment"))  # type: ignore[arg-type]
    else:
        (model,) = models
    model.eval()
    model.to(device)
    parameters = sum(int(p.numel()) for p in model.parameters())
    if device == "cpu":
        set_cpu_threads(parameters)
    return DemucsSeparator(
        model,
        model_id=str(directory),
        revision=directory_fingerprint(directory),
        license=stem_model_licence(str(directory)),
        device=device,
    )


class DemucsSeparator:
    """A loaded Demucs model (or bag) behind the Separator interface."""

    def __init__(
        self, model: torch.nn.Module, *, model_id: str, revision: str, license: str, device: str
    ) -> None:
        self.sources: tuple[str, ...] = tuple(model.sources)  # type: ignore[arg-type]
        self.sample_rate = int(model.samplerate)  # type: ignore[arg-type]
        self.channels = int(model.audio_channels)  # type: ignore[arg-type]
        self.model_id = model_id
        self.revision = revision
        self.license = license
        self.device = device
        self._model = model
        self._lock = threading.Lock()  # apply_model moves and reads the model: one at a time

    def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """Every source at the mix's shape; deterministic (no random shifts)."""
        import torch
        from demucs.apply import apply_model

        # 1. Check the mix.
        _check_mix(audio, self.channels)
        # 2. Normalise as demucs' own api does: the mix's mean and deviation (over channels).
        mix = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        reference = mix.mean(0)
        mean = reference.mean()
        std = (reference.std() if reference.numel() > 1 else torch.zeros(())) + 1e-8
        # 3. Separate segment by segment (the model's own length), overlapping by a quarter
        # and cross-faded; shifts=0: no random time shifts, so the same mix gives the same stems.
        # The mix stays where it is (CPU), each segment goes to the device.
        with self._lock, torch.inference_mode():
            out = apply_model(
                self._model,  # type: ignore[arg-type]
                ((mix - mean) / std)[None],
                shifts=0,
                split=True,
                overlap=OVERLAP,
                device=self.device,
                num_workers=0,
            )
        # 4. Undo the normalisation. demucs' api adds the mix's mean to every source, so their
        # sum would carry the DC offset once per source; each gets its share instead.
        out = out[0].to("cpu", torch.float32) * std + mean / len(self.sources)
        return {
            name: np.ascontiguousarray(out[index].numpy(), dtype=np.float32)
            for index, name in enumerate(self.sources)
        }


def _check_mix(audio: np.ndarray, channels: int) -> None:
    if not isinstance(audio, np.ndarray) or audio.ndim != 2:
        shape = getattr(audio, "shape", type(audio).__name__)
        raise AudioError(f"the mix must be a (channels, samples) array, got shape {shape}")
    if audio.shape[0] != channels or audio.shape[1] == 0:
        raise AudioError(
            f"the mix must have {channels} channels and at least one sample, got shape "
            f"{audio.shape}"
        )
    if not np.isfinite(audio).all():
        raise AudioError("the mix holds NaN or infinite samples")


# --- writing a directory ---


def _write_layout(
    directory: Path,
    members: Sequence[tuple[str, dict[str, Any], Mapping[str, torch.Tensor]]],
    *,
    licence: str,
    bag: tuple[list[list[float]] | None, float | None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """config.json and one safetensors per model; each file written to a temporary name and
    renamed into place, config.json last (a directory without it is not a model)."""
    from safetensors.torch import save_file

    from soundtrack.atomic import atomic_path

    directory.mkdir(parents=True, exist_ok=True)
    first = members[0][1]
    config: dict[str, Any] = {
        "format": FORMAT,
        "sources": list(first["sources"]),
        "samplerate": int(first.get("samplerate", 44100)),
        "audio_channels": int(first.get("audio_channels", 2)),
        "licence": licence,
    }
    entries = []
    for index, (class_name, kwargs, state) in enumerate(members):
        file = WEIGHTS if bag is None else f"model-{index}.safetensors"
        # Own, contiguous tensors: safetensors refuses shared or strided storage.
        tensors = {
            key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()
        }
        with atomic_path(directory / file) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        entries.append({"class": class_name, "kwargs": _encode(kwargs, "kwargs"), "file": file})
    if bag is None:
        config["class"] = entries[0]["class"]
        config["kwargs"] = entries[0]["kwargs"]
    else:
        config["models"] = entries
        config["weights"], config["segment"] = bag
    config.update(extra or {})
    with atomic_path(directory / CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return directory


def make_tiny_demucs(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight HTDemucs (about 400 KB; drums, bass, other, vocals at 44.1 kHz
    stereo) in the layout load_separator reads. Its stems are noise, not sources."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(**TINY_KWARGS)
    _write_layout(
        directory,
        [("HTDemucs", dict(TINY_KWARGS), model.state_dict())],
        licence=TINY_LICENSE,
    )
    (directory / "README.md").write_text(
        f"---\nlicense: other\nlicense_name: {TINY_LICENSE}\n---\n"
        "# Tiny random-weight HTDemucs\n\n"
        "Written by `soundtrack models make-tiny --family demucs` for smoke tests without "
        "weights. Its stems are noise, not sources.\n"
    )
    return directory


# --- converting a published checkpoint ---

_CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth")
_BAG_SUFFIXES = (".yaml", ".yml")


def convert_demucs(checkpoint: Path, directory: Path, *, licence: str = "MIT") -> Path:
    """Turn a published Demucs checkpoint into the layout load_separator reads, once.

    `checkpoint` is a `.th` file as demucs downloads it (e.g. htdemucs, 955717e8-8726e21a.th in
    torch's hub cache): the pickled dict demucs.states.serialize_model writes ('klass', 'args',
    'kwargs', 'state', ...). It is read with torch's weights-only unpickler, which builds
    tensors and plain data and refuses every class but HTDemucs, HDemucs, Demucs and Fraction
    (stand-ins for them: a class is named, never built): a file that needs anything else is
    refused, never run. A bag of models is its `.yaml`
    (demucs' remote/htdemucs_ft.yaml) with each model's `<sig>.th` or `<sig>-<checksum>.th`
    beside it, as in demucs' own `--repo` folders. Published Demucs weights are MIT.
    """
    if checkpoint.suffix in _BAG_SUFFIXES:
        members, bag, sources = _read_bag(checkpoint)
    else:
        members, bag, sources = [_read_checkpoint(checkpoint)], None, [checkpoint]
    provenance = [{"file": p.name, "sha256": _sha256(p)} for p in sources]
    extra: dict[str, Any] = {
        "converted_from": provenance[0] if bag is None else provenance,
    }
    dropped = sorted({name for _, _, _, names in members for name in names})
    if dropped:
        extra["dropped_kwargs"] = dropped  # demucs' own loader drops them too, with a warning
    return _write_layout(
        directory,
        [(name, kwargs, state) for name, kwargs, state, _ in members],
        licence=licence,
        bag=bag,
        extra=extra,
    )


def _read_bag(
    path: Path,
) -> tuple[
    list[tuple[str, dict[str, Any], dict[str, torch.Tensor], list[str]]],
    tuple[list[list[float]] | None, float | None],
    list[Path],
]:
    import yaml

    try:
        bag = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelLoadError(f"bag {str(path)!r}: unreadable ({error})") from error
    signatures = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(signatures, list) or not signatures:
        raise ModelLoadError(f"bag {str(path)!r}: no 'models' list of checkpoint signatures")
    files = []
    for signature in signatures:
        found = sorted(
            p
            for suffix in _CHECKPOINT_SUFFIXES
            for p in path.parent.glob(f"{glob.escape(str(signature))}*{suffix}")
            if p.stem == str(signature) or p.stem.startswith(f"{signature}-")
        )
        if len(found) != 1:
            raise ModelLoadError(
                f"bag {str(path)!r}: model {signature!r} needs one file {signature}.th or "
                f"{signature}-<checksum>.th beside the bag, found "
                f"{', '.join(p.name for p in found) or 'none'}"
            )
        files.append(found[0])
    members = [_read_checkpoint(file) for file in files]
    weights, segment = bag.get("weights"), bag.get("segment")
    problem = _bag_problem(weights, segment, len(members), len(members[0][1]["sources"]))
    if problem:
        raise ModelLoadError(f"bag {str(path)!r}: {problem}")
    return members, (weights, None if segment is None else float(segment)), [path, *files]


def _read_checkpoint(
    path: Path,
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """(class name, constructor kwargs, state, dropped kwargs) of one `.th` checkpoint."""
    import torch

    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise ModelLoadError(f"{where}: no such file")
    classes = _classes()
    # Exactly what a published file holds beside tensors and plain data: the model's class,
    # named, and HTDemucs' segment, a Fraction. The reader calls what it allows with arguments
    # from the file, so it gets stand-ins: a class is never built, a fraction only from digits.
    stand_ins = [
        (_StoredClass(name), f"{cls.__module__}.{cls.__qualname__}")
        for name, cls in classes.items()
    ]
    with torch.serialization.safe_globals([*stand_ins, (_fraction, "fractions.Fraction")]):
        try:
            package = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ModelLoadError(_refusal(where, str(error))) from error
        except Exception as error:  # a malformed file fails in many ways; nothing in it ran
            raise ModelLoadError(
                f"{where}: not a torch checkpoint ({type(error).__name__}: {error})"
            ) from error
    if not isinstance(package, dict) or not {"klass", "kwargs", "state"} <= package.keys():
        raise ModelLoadError(
            f"{where}: not a Demucs checkpoint (a dict with 'klass', 'args', 'kwargs' and "
            f"'state', as demucs.states.serialize_model writes)"
        )
    klass = package["klass"]
    if not isinstance(klass, _StoredClass):
        raise ModelLoadError(f"{where}: 'klass' is a {type(klass).__name__}, not a Demucs class")
    name = klass.name
    state = package["state"]
    if not isinstance(state, dict) or state.get("__quantized"):
        raise ModelLoadError(
            f"{where}: its weights are quantized with diffq (mdx_q, mdx_extra_q); only "
            f"unquantized checkpoints are converted"
        )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{where}: 'state' holds more than tensors")
    # Positional arguments by name, then only those the class still takes (demucs' own loader
    # drops the others with a warning).
    if not isinstance(package["kwargs"], dict) or not isinstance(
        package.get("args", ()), list | tuple
    ):
        raise ModelLoadError(f"{where}: its 'args' must be a list and its 'kwargs' a dict")
    parameters = inspect.signature(classes[name]).parameters
    kwargs = dict(package["kwargs"])
    dropped = sorted(key for key in kwargs if key not in parameters)
    for key in dropped:
        del kwargs[key]
    try:
        bound = inspect.signature(classes[name]).bind(*package.get("args", ()), **kwargs)
    except TypeError as error:
        raise ModelLoadError(f"{where}: its arguments do not fit {name} ({error})") from error
    kwargs = dict(bound.arguments)
    _encode(kwargs, "kwargs")  # refuse anything but plain data before writing a file
    sources = kwargs["sources"]
    if not _source_names(sources):
        raise ModelLoadError(
            f"{where}: its sources {printable(repr(sources))[:200]} are not distinct source "
            f"names (lower-case letters, digits and _, as demucs' drums or bass)"
        )
    for key in ("samplerate", "audio_channels"):
        if not isinstance(kwargs.get(key, 1), int) or kwargs.get(key, 1) < 1:
            raise ModelLoadError(
                f"{where}: its {key} is {printable(repr(kwargs[key]))[:100]}, not a whole "
                f"number above 0"
            )
    return name, kwargs, state, dropped


@dataclass(frozen=True)
class _StoredClass:
    """A Demucs class as a checkpoint names it: never called, so never built from the file."""

    name: str

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError(
            f"it builds a {self.name} from its own arguments; a published checkpoint names "
            f"its class only"
        )


_FRACTION_TEXT = re.compile(r"-?\d{1,18}(?:/\d{1,18}|\.\d{1,18})?")


def _fraction(*args: object) -> Fraction:
    """Fraction as a checkpoint may store one ('39/5', or numerator and denominator), refusing
    what would take the reader hours or gigabytes ('1e900000000', thousand-digit numbers)."""
    if len(args) == 1 and isinstance(args[0], str) and _FRACTION_TEXT.fullmatch(args[0]):
        return Fraction(args[0])
    small = [a for a in args if type(a) is int and a.bit_length() <= 64]
    if len(args) == 2 and len(small) == 2 and args[1] != 0:
        return Fraction(*small)
    raise pickle.UnpicklingError(
        f"its Fraction of {printable(repr(args))[:100]} is no segment's length"
    )


def _refusal(where: str, error: str) -> str:
    """Why torch's weights-only reader refused a file, from its message."""
    found = re.search(r"GLOBAL (\S+)", error)
    if found:
        return (
            f"{where}: names {found.group(1)}, which torch's weights-only reader refuses "
            f"(reading it could run code), so it is not converted: only Demucs' HTDemucs, "
            f"HDemucs and Demucs checkpoints holding tensors, plain data and fractions are"
        )
    detail = error.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0]
    return (
        f"{where}: not a checkpoint torch's weights-only reader can read ({detail}); "
        f"nothing in it was run"
    )


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- the sum gate's measure ---


def residual_db(mix: np.ndarray, stems: Sequence[np.ndarray]) -> float:
    """How far the residual (mix minus the sum of the stems) lies below the mix, in dB of energy:
    10 log10(sum mix^2 / sum residual^2). Positive: below the mix; +inf when the stems sum to
    the mix exactly (silence included); -inf for a silent mix with a non-silent residual."""
    if not stems:
        raise ValueError("residual_db needs at least one stem")
    reference = np.asarray(mix, dtype=np.float64)
    total = np.zeros_like(reference)
    for index, stem in enumerate(stems):
        if np.shape(stem) != reference.shape:
            raise ValueError(
                f"stem {index} has shape {np.shape(stem)}, the mix {reference.shape}: stems "
                f"must match the mix exactly"
            )
        total += np.asarray(stem, dtype=np.float64)
    mix_energy = float(np.sum(reference**2))
    residual_energy = float(np.sum((reference - total) ** 2))
    if residual_energy == 0.0:
        return math.inf
    if mix_energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(mix_energy / residual_energy)
