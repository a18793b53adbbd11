"""Where a model's files are: a local directory or the Hugging Face cache, never a silent wait."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from soundtrack.catalog import is_local
from soundtrack.errors import ModelLoadError
from soundtrack.hashing import read_regular
from soundtrack.licences import licence_of
from soundtrack.paths import user_path
from soundtrack.separate import FORMAT as SEPARATOR_FORMAT

HUB_TIMEOUT_S = 10.0  # the metadata request; a download that has started is not cut short
# Diffusers checkpoints keep these in component folders; "*" matches across "/" here. Bark's
# BERT tokenizer reads vocab.txt.
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*merges.txt", "*vocab.txt", "README.md"]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit safetensors itself sets
_Stats = tuple[tuple[str, int, int, int, int], ...]  # name, size, mtime, ctime, inode per file
_fingerprints: dict[tuple[str, _Stats], str] = {}
_unsaved: dict[tuple[str, _Stats], str] = {}  # hashed, not yet in the cache (keep_fingerprints)
_saving = threading.Lock()
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelSource:
    """A model's files on disk, with the revision and licence recorded for every render."""

    model_id: str  # the hub id, or the local directory's absolute path
    directory: Path
    revision: str  # hub commit sha, or "sha256:<hex>" of a local directory's files
    license: str
    model_type: str  # the family (model_family): a BACKENDS key


# A transformers checkpoint's config.json model_type -> its family (mono and stereo MusicGen
# share one). Not musicgen_melody: its feature extractor needs torchaudio, which is not loaded.
MODEL_TYPE_FAMILIES = {"musicgen": "musicgen", "bark": "bark"}

# A diffusers pipeline's _class_name -> its family, and the (library, class) each component of
# model_index.json may name. Nothing else is loaded: a component naming any other class, or a
# module of its own (custom code), is refused before a file of weights is read.
_QWEN_TOKENIZERS = {
    ("transformers", name)
    for name in (
        "PreTrainedTokenizerFast",
        "TokenizersBackend",
        "Qwen2Tokenizer",
        "Qwen2TokenizerFast",
    )
}


def _ace_step(name: str) -> set[tuple[str, str]]:
    return {("diffusers", name), ("ace_step", name)}


DIFFUSERS_PIPELINES: dict[str, tuple[str, dict[str, set[tuple[str, str]]]]] = {
    "AceStepPipeline": (
        "ace-step",
        {
            "vae": {("diffusers", "AutoencoderOobleck")},
            "text_encoder": {("transformers", "Qwen3Model")},
            "tokenizer": _QWEN_TOKENIZERS,
            "transformer": {("diffusers", "AceStepTransformer1DModel")},
            # diffusers' converter writes "diffusers", save_pretrained the pipeline's module.
            "condition_encoder": _ace_step("AceStepConditionEncoder"),
            "scheduler": {("diffusers", "FlowMatchEulerDiscreteScheduler")},
            "audio_tokenizer": _ace_step("AceStepAudioTokenizer"),
            "audio_token_detokenizer": _ace_step("AceStepAudioTokenDetokenizer"),
        },
    ),
    "StableAudioPipeline": (
        "stable-audio",
        {
            "vae": {("diffusers", "AutoencoderOobleck")},
            "text_encoder": {("transformers", "T5EncoderModel")},
            "tokenizer": {
                ("transformers", name)
                for name in ("T5Tokenizer", "T5TokenizerFast", "PreTrainedTokenizerFast")
            },
            # save_pretrained names the pipeline's module, "stable_audio", for this one.
            "projection_model": {
                (module, "StableAudioProjectionModel") for module in ("diffusers", "stable_audio")
            },
            "transformer": {("diffusers", "StableAudioDiTModel")},
            # The real checkpoint's Cosine scheduler needs torchsde; EDM's runs without it.
            "scheduler": {
                ("diffusers", name)
                for name in ("CosineDPMSolverMultistepScheduler", "EDMDPMSolverMultistepScheduler")
            },
        },
    ),
}


# What a pipeline loads without (diffusers' `_optional_components`); it needs every other one.
_OPTIONAL_COMPONENTS = {"AceStepPipeline": {"audio_tokenizer", "audio_token_detokenizer"}}


def cannot_load(source: ModelSource, family: str, error: Exception) -> ModelLoadError:
    """The error of a checkpoint its library could not load. Anything it raises counts: a
    malformed config raises what it happens to (ZeroDivisionError for a rate of 0, RuntimeError
    for a tensor too large to allocate), and a model that cannot load is bad input."""
    said = str(error) if isinstance(error, OSError | ValueError) else repr(error)
    return ModelLoadError(
        f"model {source.model_id!r}: cannot load {family} from {source.directory} ({said}); "
        f"{how_to_provide(source.model_id)}"
    )


def how_to_provide(model: str) -> str:
    """The ways to make a model's weights available, for error messages."""
    tiny = "for smoke tests without weights, `soundtrack models make-tiny DIR` writes a tiny model"
    if is_local(model):  # the hub has nothing to offer for a folder
        return (
            "the folder must hold the model's config files and its weights as safetensors "
            "(pickled .bin or .pt weights are never loaded), as save_pretrained or "
            f"`hf download --local-dir` writes them; {tiny}"
        )
    return (
        f"pass a local directory holding the model (config.json and weights) as the model, or "
        f"download it once with network access (`hf download {model}`) so it lands in the "
        f"Hugging Face cache (set by HF_HOME or HF_HUB_CACHE; now {constants.HF_HUB_CACHE}); "
        f"{tiny}"
    )


def resolve_source(model: str, revision: str | None) -> ModelSource:
    """Find a model's files locally, else fetch them from the hub, with their weights readable
    as safetensors (a hub snapshot may lack some); raise ModelLoadError fast."""
    path = user_path(model)
    if not is_local(model):
        source = _hub_source(model, revision)
        check_weights(source.directory, model)
        return source
    family = model_family(path, model)  # before hashing gigabytes of weights
    check_weights(path, model)
    return _local_source(path.resolve(), revision, family)


def check_pin(directory: Path, revision: str | None, model: str) -> str:
    """A local folder's fingerprint; ModelLoadError when `revision` pins another."""
    fingerprint = directory_fingerprint(directory)
    if revision is not None and revision != fingerprint:
        raise ModelLoadError(
            f"model {model!r}: its files have fingerprint {fingerprint}, but model_revision "
            f"{revision!r} is pinned: the folder changed since the pin (a folder's revision is "
            "its fingerprint, never a hub commit)"
        )
    return fingerprint


def _local_source(directory: Path, revision: str | None, family: str) -> ModelSource:
    fingerprint = check_pin(directory, revision, str(directory))
    return ModelSource(
        model_id=str(directory),
        directory=directory,
        revision=fingerprint,
        license=licence_of(str(directory), directory=directory),
        model_type=family,
    )


def _hub_source(model: str, revision: str | None) -> ModelSource:
    try:
        directory = Path(
            snapshot_download(
                model, revision=revision, allow_patterns=_HUB_FILES, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        directory = _download(model, revision)
    if not any((directory / name).is_file() for name in ("model_index.json", "config.json")):
        directory = _download(model, revision)
    return ModelSource(
        model_id=model,
        directory=directory,
        revision=directory.name,  # snapshots/<commit sha>
        license=licence_of(model, directory=directory),
        model_type=model_family(directory, model),
    )


def _download(model: str, revision: str | None) -> Path:
    where = f"{model!r}" + (f" at revision {revision!r}" if revision else "")
    if is_offline_mode():
        raise ModelLoadError(
            f"model {where} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"{how_to_provide(model)}"
        )
    try:
        info = HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as error:
        raise ModelLoadError(
            f"model {where}: not found on the Hugging Face hub ({type(error).__name__}); "
            f"{how_to_provide(model)}"
        ) from error
    except Exception as error:  # network failures come from several libraries (httpx, ssl, os)
        raise ModelLoadError(
            f"model {where} is not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(error).__name__}: {error}); {how_to_provide(model)}"
        ) from error
    return Path(snapshot_download(model, revision=info.sha, allow_patterns=_HUB_FILES))


def model_family(directory: Path, model: str) -> str:
    """The family a checkpoint's own files name: model_index.json's pipeline (its components
    held to the allow-list), else config.json's model_type. Reads no weights; ModelLoadError
    for a folder that is no model, or names anything without a backend."""
    if not directory.is_dir():
        what = "a file, not a model directory" if directory.exists() else "no such directory"
        pin = " (a hub revision goes in model_revision, not after an @)" if "@" in model else ""
        raise ModelLoadError(
            f"model {model!r}: {what} ({directory.absolute()}); give a directory holding "
            f"config.json and the weights, or a hub id such as facebook/musicgen-small{pin}"
        )
    if (directory / "model_index.json").is_file():
        return _pipeline_family(directory, model)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"model {model!r}: not a model directory (no config.json or model_index.json in "
            f"{directory}); give a directory written by save_pretrained, hf download or "
            f"`soundtrack models make-tiny`"
        )
    config = _read_object(directory / "config.json", model)
    model_type = config.get("model_type")
    if config.get("format") == SEPARATOR_FORMAT:
        raise ModelLoadError(
            f"model {model!r}: a separation model (Demucs): name it as a track's stem_model"
        )
    if not isinstance(model_type, str):
        raise ModelLoadError(f"model {model!r}: config.json has no model_type")
    if model_type not in MODEL_TYPE_FAMILIES:
        raise ModelLoadError(
            f"model {model!r}: model_type {model_type!r} has no backend (supported: "
            f"{', '.join(sorted(MODEL_TYPE_FAMILIES))})"
        )
    return MODEL_TYPE_FAMILIES[model_type]


def _config_name(component: object) -> str:
    """The config file a pipeline component loads from its folder, by its [library, class]:
    a tokenizer's without its own (tokenizer.json alone) took a length of 10^30 and crashed
    the render."""
    library, name = component if isinstance(component, list) and len(component) == 2 else ("", "")
    if library == "transformers" and "Tokenizer" in str(name):
        return "tokenizer_config.json"
    if str(name).endswith("Scheduler"):
        return "scheduler_config.json"
    return "config.json"


def check_weights(directory: Path, model: str) -> None:
    """Every folder of a local checkpoint that holds a model (its own config.json) has its
    weights as safetensors whose headers read: found before a build renders, not as a failed
    track. Reads each file's header, never its tensors."""
    folders = [directory]
    if (directory / "model_index.json").is_file():
        index = _read_object(directory / "model_index.json", model)
        components = {
            n: v
            for n, v in index.items()
            if not n.startswith("_") and v not in ([None, None], None)
        }
        named = list(components)
        # Each component the pipeline loads has its folder and its config (a model's
        # config.json, a scheduler's or tokenizer's own); an interrupted copy lacks some.
        configs = [f"{n}/{_config_name(v)}" for n, v in components.items()]
        missing = [config for config in configs if not (directory / config).is_file()]
        if missing:
            raise ModelLoadError(
                f"model {model!r}: model_index.json names components whose config {directory} "
                f"lacks: {', '.join(missing)}; {how_to_provide(model)}"
            )
        folders = [directory / n for n in named if any((directory / n).glob("*.safetensors"))]
        folders += [directory / n for n in named if (directory / n / "config.json").is_file()]
    for folder in dict.fromkeys(folders):
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"model {model!r}: {folder} holds weights but no config.json; "
                f"{how_to_provide(model)}"
            )
        # Regular files only: a folder, a FIFO (which would hang a read) or a dangling link
        # with that name holds no weights.
        weights = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
        # What from_pretrained reads: another name would pass here, then fail the load (or,
        # beside a pytorch_model.bin, let a loader fall back to unpickling it).
        if not any(p.name in _WEIGHT_FILES for p in weights) and not _shards(folder, model):
            pickles = sorted(p.name for p in folder.glob("*") if p.suffix in _PICKLE_SUFFIXES)
            found = f" (only {', '.join(pickles)})"
            raise ModelLoadError(
                f"model {model!r}: {folder} holds no weights as safetensors"
                f"{found if pickles else ''}: a model's are {' or '.join(_WEIGHT_FILES)} (or "
                f"shards with their index); {how_to_provide(model)}"
            )
        for path in weights:
            problem = safetensors_problem(path)
            if problem:
                raise ModelLoadError(
                    f"model {model!r}: {path} is not a safetensors file ({problem})"
                )


def _shards(folder: Path, model: str) -> list[str]:
    """The shards the index of `folder`'s weights lists, each one there; [] without an index.
    ModelLoadError for an index that lists none, or one not in the folder."""
    for name in _WEIGHT_FILES:
        index_path = folder / f"{name}.index.json"
        if not index_path.is_file():
            continue
        weight_map = _read_object(index_path, model).get("weight_map")
        shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        absent = [
            str(shard)
            for shard in shards
            if not isinstance(shard, str)
            or Path(shard).name != shard
            or shard in ("", ".", "..")
            or not (folder / shard).is_file()
        ]
        if not shards or absent:
            what = f"lists {', '.join(absent)}, not in the folder" if absent else "lists no shard"
            raise ModelLoadError(f"model {model!r}: {index_path} {what}; {how_to_provide(model)}")
        return shards
    return []


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is no safetensors file: its first 8 bytes give the length of a JSON header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little") if size >= 8 else 0
            if not 2 <= length <= min(size - 8, _MAX_HEADER_BYTES):
                return f"a header of {length} bytes in a file of {size}"
            try:
                header = json.loads(handle.read(length))
            except ValueError:
                return "its header is not JSON"
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    return None if isinstance(header, dict) else "its header is not a JSON object"


def _read_object(path: Path, model: str) -> dict[str, object]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ModelLoadError(f"model {model!r}: unreadable {path.name} ({error})") from error
    if not isinstance(found, dict):
        raise ModelLoadError(
            f"model {model!r}: {path.name} holds {type(found).__name__}, not a JSON object"
        )
    return found


def _pipeline_family(directory: Path, model: str) -> str:
    index = _read_object(directory / "model_index.json", model)
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or class_name not in DIFFUSERS_PIPELINES:
        raise ModelLoadError(
            f"model {model!r}: model_index.json names the pipeline {class_name!r}, which has no "
            f"backend (supported: {', '.join(sorted(DIFFUSERS_PIPELINES))})"
        )
    family, allowed = DIFFUSERS_PIPELINES[class_name]
    for name, value in index.items():
        if name.startswith("_") or value in ([None, None], None):
            continue  # metadata, or an optional component the checkpoint leaves out
        named = (
            tuple(value)
            if isinstance(value, list) and all(isinstance(part, str) for part in value)
            else None
        )
        if named not in allowed.get(name, set()):
            expected = " or ".join(sorted("/".join(c) for c in allowed.get(name, set())))
            raise ModelLoadError(
                f"model {model!r}: {class_name} component {name!r} is {value!r}; "
                + (
                    f"only {expected} is loaded (never custom code)"
                    if expected
                    else f"{class_name} has no such component (never custom code)"
                )
            )
    optional = _OPTIONAL_COMPONENTS.get(class_name, set())
    left_out = [n for n in allowed if n not in optional and index.get(n) in ([None, None], None)]
    if left_out:
        raise ModelLoadError(
            f"model {model!r}: model_index.json leaves out {', '.join(left_out)}, which "
            f"{class_name} needs; {how_to_provide(model)}"
        )
    return family


# A checkpoint holds tens of files; thousands mean a link to a folder outside it (`/`, `/usr`),
# which would be walked and hashed whole.
MAX_MODEL_FILES = 10_000


def _files_under(directory: Path) -> list[Path]:
    """Every file under `directory`, through symlinked folders (a component folder may be one,
    and the loader follows it), each real folder once (a link back up would loop)."""
    seen: set[str] = set()
    files = []
    for root, folders, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        folders[:] = [f for f in folders if not f.startswith(".")]
        files += [Path(root, name) for name in names]
        if len(files) > MAX_MODEL_FILES:
            raise ModelLoadError(
                f"model folder {directory} holds more than {MAX_MODEL_FILES} files (through "
                f"{root}): a link to a folder outside the checkpoint? Give the checkpoint's "
                "own folder"
            )
    return files


def directory_fingerprint(directory: Path) -> str:
    """sha256 over the paths and contents of a model directory's files (component folders
    included, hidden files and the top-level README excluded); hashed once per process.
    ModelLoadError for a file that cannot be read, or too many files."""
    try:
        return _fingerprint(directory)
    except OSError as exc:
        raise ModelLoadError(
            f"model folder {directory}: cannot read {exc.filename or 'a file'} "
            f"({exc.strerror or exc})"
        ) from None


def _fingerprint(directory: Path) -> str:
    files = sorted(
        p
        for p in _files_under(directory)
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and p.relative_to(directory).as_posix() != "README.md"
    )
    names = [p.relative_to(directory).as_posix() for p in files]
    # ctime and inode too, as git's index keeps them: a copy that keeps sizes and mtimes (rsync
    # -a, tar) changes a file's ctime, which no one can set.
    stats = tuple(
        (name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
        for name, s in ((name, p.stat()) for name, p in zip(names, files, strict=True))
    )
    key = (str(directory), stats)
    if key not in _fingerprints:
        found = _remembered(key)
        if found is None:
            found = _hashed(names, files)
            _unsaved[key] = found
        _fingerprints[key] = found
    return _fingerprints[key]


def _hashed(names: list[str], files: list[Path]) -> str:
    digest = hashlib.sha256()
    for name, path in zip(names, files, strict=True):
        with path.open("rb") as handle:
            file_digest = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{name}\0{file_digest}\n".encode())
    return f"sha256:{digest.hexdigest()}"


# Gigabytes of weights take seconds to hash, and every validate and build of a pinned folder
# asks: a folder's fingerprint is kept beside the render cache, under its files' names, sizes,
# times and inodes (as git's index trusts them).
def _memo_path(key: tuple[str, _Stats]) -> Path:
    from soundtrack.renders import cache_root

    name = hashlib.sha256(repr(key).encode()).hexdigest()
    return cache_root() / "fingerprints" / f"{name}.txt"


def _remembered(key: tuple[str, _Stats]) -> str | None:
    try:
        memo = read_regular(_memo_path(key), follow_links=False)
        found = memo.decode("ascii", "replace").strip()
    except (OSError, RuntimeError):  # RuntimeError: no home folder to find the cache in
        return None
    return found if _FINGERPRINT.fullmatch(found) else None


def keep_fingerprints() -> None:
    """Save the fingerprints hashed so far for later runs; called once the inputs are accepted
    (or a model loaded), so a refused manifest leaves the cache as it found it."""
    with _saving:  # a build's threads load a separator and a generator at once
        while _unsaved:
            _remember(*_unsaved.popitem())


def _remember(key: tuple[str, _Stats], fingerprint: str) -> None:
    from soundtrack.atomic import atomic_path

    try:
        path = _memo_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(fingerprint)
    except (OSError, RuntimeError):
        pass  # a read-only cache (or none) only costs the hashing again
