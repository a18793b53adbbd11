"""Generation models: a registry from model id to backend, loaded once per process."""

from __future__ import annotations

import threading
from collections.abc import Callable

from soundtrack.catalog import is_local
from soundtrack.errors import GenerationError, ModelLoadError
from soundtrack.models.base import (
    GeneratedAudio,
    GenerationRequest,
    Generator,
    ProgressCallback,
    check_audio,
    check_request,
)
from soundtrack.models.source import ModelSource, keep_fingerprints, resolve_source
from soundtrack.paths import user_path

__all__ = [
    "BACKENDS",
    "GeneratedAudio",
    "GenerationRequest",
    "Generator",
    "ProgressCallback",
    "check_audio",
    "check_model",
    "check_request",
    "generate_one",
    "get_generator",
    "load_count",
]


def _load_musicgen(source: ModelSource, device: str) -> Generator:
    # Imported here: transformers' MusicGen classes take seconds to import.
    from soundtrack.models.musicgen import load_musicgen

    return load_musicgen(source, device)


def _load_acestep(source: ModelSource, device: str) -> Generator:
    # Imported here: diffusers takes seconds to import.
    from soundtrack.models.acestep import load_acestep

    return load_acestep(source, device)


def _load_bark(source: ModelSource, device: str) -> Generator:
    from soundtrack.models.bark import load_bark

    return load_bark(source, device)


def _load_stableaudio(source: ModelSource, device: str) -> Generator:
    from soundtrack.models.stableaudio import load_stableaudio

    return load_stableaudio(source, device)


# The family -> the backend that loads it: config.json's model_type for transformers (mono and
# stereo MusicGen share one), a diffusers pipeline's family by its model_index.json _class_name.
BACKENDS: dict[str, Callable[[ModelSource, str], Generator]] = {
    "musicgen": _load_musicgen,
    "ace-step": _load_acestep,
    "bark": _load_bark,
    "stable-audio": _load_stableaudio,
}

_lock = threading.Lock()
_loaded: dict[tuple[str, str | None, str], Generator] = {}
_loads = 0


def check_model(model: str, revision: str | None = None) -> str:
    """The model's family; ModelLoadError unless its files are at hand, its weights read as
    safetensors and a backend loads it."""
    source = resolve_source(model, revision)
    _backend(source, model)
    return source.model_type


def _backend(source: ModelSource, model: str) -> Callable[[ModelSource, str], Generator]:
    backend = BACKENDS.get(source.model_type)
    if backend is None:
        raise ModelLoadError(
            f"model {model!r}: model_type {source.model_type!r} has no backend "
            f"(supported: {', '.join(sorted(BACKENDS))})"
        )
    return backend


def get_generator(model: str, revision: str | None = None, device: str | None = None) -> Generator:
    """Loaded once per (model, revision, device) per process; raises ModelLoadError fast. On an
    accelerator one model stays resident: loading another releases the ones before it."""
    # torch costs two seconds to import: only a build that really renders should pay for it.
    from soundtrack.models.device import resolve_device

    resolved_device = resolve_device(device)
    key = (str(user_path(model).resolve()) if is_local(model) else model, revision, resolved_device)
    global _loads
    with _lock:
        if key not in _loaded:
            source = resolve_source(key[0], revision)
            backend = _backend(source, model)
            if one_resident(resolved_device):
                _release(resolved_device)
            _loaded[key] = backend(source, resolved_device)
            _loads += 1
            keep_fingerprints()
        return _loaded[key]


def one_resident(device: str) -> bool:
    """Whether `device` holds one model at a time: two checkpoints of several GB each need not
    fit in a GPU's memory together, while a build renders every track of a model in a row."""
    return device != "cpu"


def _release(device: str) -> None:
    """Forget the models loaded on `device`; a render still running keeps its own until done."""
    for key in [key for key in _loaded if key[2] == device]:
        del _loaded[key]
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def generate_one(request: GenerationRequest, generator: Generator) -> GeneratedAudio:
    """Render one request; raise its GenerationError instead of returning it."""
    (result,) = generator.generate([request])
    if isinstance(result, GenerationError):
        raise result
    return result


def load_count() -> int:
    """How many models this process has loaded (a cached rebuild must not add to it)."""
    return _loads
