"""A content-addressed cache of raw renders, keyed by each track's generation key.

A build that crashes after generating resumes from here without regenerating; a render is only
used when its float WAV still matches the sha256 recorded beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from soundtrack import events
from soundtrack.atomic import atomic_path, clear_folder
from soundtrack.audio import read_audio, write_wav
from soundtrack.errors import GenerationError, SoundtrackError, StorageError
from soundtrack.formats import content_type_for
from soundtrack.hashing import file_sha256, read_regular
from soundtrack.paths import user_path
from soundtrack.report import Sha256, first_problem
from soundtrack.spec import ParentAudio, TrackSpec
from soundtrack.storage import Storage
from soundtrack.storage.base import check_name

if TYPE_CHECKING:
    from soundtrack.models import GenerationRequest, ProgressCallback

CACHE_ENV = "SOUNDTRACK_CACHE_DIR"


@dataclass(frozen=True)
class Render:
    """A raw render on disk and the model that made it."""

    path: Path
    sha256: str
    sample_rate: int
    model_id: str
    revision: str
    license: str


def sidecar_json(render: Render, generation_key: str | None = None) -> str:
    """What is recorded beside a render: its checksum, rate and model (not its local path),
    and in this machine's cache its key. A handed-over one leaves the key to its object's
    name: a build of an earlier version, during a rolling upgrade, reads no field it does not
    know."""
    record = {k: v for k, v in asdict(render).items() if k != "path"}
    key = {} if generation_key is None else {"generation_key": generation_key}
    return json.dumps({**key, **record}, indent=2)


class _Sidecar(BaseModel):
    """A sidecar as read back: from this machine's cache, or from storage, where a pool machine
    (or anyone with write access) left it."""

    generation_key: str | None = None  # None: its file name's (handed over, or written before)
    sha256: Sha256
    sample_rate: Annotated[int, Field(strict=True, gt=0)]
    model_id: str
    revision: str
    license: str


def _render_of(data: bytes, generation_key: str, path: Path) -> Render:
    """The render a sidecar records, at `path`; ValueError saying why it is no render of
    `generation_key`: another key's (an entry copied or renamed: another track's audio), or
    no render's sidecar."""
    try:
        record = _Sidecar.model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"no render's sidecar ({first_problem(exc)})") from None
    if record.generation_key not in (None, generation_key):
        raise ValueError(f"the sidecar of another track's render ({record.generation_key})")
    return Render(path, **record.model_dump(exclude={"generation_key"}))


def cache_root() -> Path:
    """$SOUNDTRACK_CACHE_DIR, else $XDG_CACHE_HOME/soundtrack, else ~/.cache/soundtrack."""
    if os.environ.get(CACHE_ENV):
        return user_path(os.environ[CACHE_ENV])
    return user_cache_home() / "soundtrack"


def user_cache_home() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache: this user's caches, whatever the project. A relative
    $XDG_CACHE_HOME is ignored, as the XDG spec says: it would put caches in the working folder."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return Path(base) if Path(base).is_absolute() else Path.home() / ".cache"


class RenderCache:
    """Raw renders stored as `<root>/renders/<generation_key>.wav` plus a JSON sidecar."""

    def __init__(self, root: Path) -> None:
        self.root = root / "renders"

    def holds(self, spec: TrackSpec) -> bool:
        """Whether a usable render of `spec` is stored here (it hashes the render): a damaged
        one is rendered again, so its batch takes its turn on the device."""
        return self.get(_key(spec)) is not None

    def lists(self, spec: TrackSpec) -> bool:
        """Whether an entry for `spec` is stored here, unread: for counting, not for using."""
        return (self.root / f"{_key(spec)}.json").is_file()

    def get(self, generation_key: str) -> Render | None:
        """The cached render, or None when absent, incomplete, corrupted or not this key's.
        A link is no entry: what it names is no render of this cache's."""
        try:
            sidecar = read_regular(self.root / f"{generation_key}.json", follow_links=False)
            render = _render_of(sidecar, generation_key, self.wav_path(generation_key))
            if file_sha256(render.path, follow_links=False) != render.sha256:
                return None
        except (OSError, ValueError):
            return None
        # Marked used, so that pruning by age (docs/operations.md) keeps what builds still read;
        # a cache this user may only read stays as it is.
        for path in (render.path, render.path.with_suffix(".json")):
            with contextlib.suppress(OSError):
                os.utime(path, follow_symlinks=False)
        return render

    def put(
        self,
        generation_key: str,
        audio: np.ndarray,
        sample_rate: int,
        *,
        model_id: str,
        revision: str,
        license: str,
    ) -> Render:
        """Store a render; the sidecar is written last, so a crash leaves no usable half entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.wav_path(generation_key)
        clear_folder(path)
        write_wav(path, audio, sample_rate)
        render = Render(path, file_sha256(path), sample_rate, model_id, revision, license)
        self.adopt(render)
        return render

    def parent_path(self, parent: ParentAudio) -> Path:
        """Where a variation's parent audio lies once fetched (content-addressed); InputError
        for a parent whose names are no file's (a render-batch run's parameters)."""
        check_name("sha256", parent.sha256)
        check_name("format", parent.ext)
        return self.root.parent / "parents" / f"{parent.sha256}.{parent.ext}"

    def wav_path(self, generation_key: str) -> Path:
        """Where the render of this key lies once cached."""
        return self.root / f"{generation_key}.wav"

    def adopt(self, render: Render) -> None:
        """Record a render whose WAV is already at its cache path (written here or fetched)."""
        sidecar = render.path.with_suffix(".json")
        clear_folder(sidecar)
        with atomic_path(sidecar) as tmp:
            tmp.write_text(sidecar_json(render, render.path.stem))

    @staticmethod
    def load(render: Render) -> tuple[np.ndarray, int]:
        """The render's audio, (channels, frames) float32."""
        return read_audio(render.path)


@dataclass(frozen=True)
class RenderFailure:
    """A track whose render failed (NaN, silence, a backend error), with the reason."""

    track_id: str
    reason: str
    # The model that rendered it (loaded, so known), for the lock to say what failed.
    model_id: str | None = None
    revision: str | None = None
    license: str | None = None


def render_batch(
    specs: Sequence[TrackSpec],
    cache: RenderCache,
    *,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> list[Render | RenderFailure]:
    """Render the batch's tracks that the cache lacks in one generate call; one result per spec.

    The model is loaded only when something is missing. CUDA running out of memory is retried
    once with half the batch size.
    """
    missing = [spec for spec in specs if _cached(cache, spec) is None]
    fresh: dict[str, Render | RenderFailure] = {}
    if missing:
        # torch and transformers take seconds to import; a cached rebuild never needs them.
        import torch

        from soundtrack.models import get_generator

        first = missing[0]
        generator = get_generator(first.model, first.model_revision, device)
        requests = [_request(spec, cache) for spec in missing]
        try:
            outputs = generator.generate(requests, progress=progress)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            smaller = max(1, len(requests) // 2)
            outputs = generator.generate(requests, batch_size=smaller, progress=progress)
        for spec, output in zip(missing, outputs, strict=True):
            if isinstance(output, GenerationError):
                fresh[spec.id] = RenderFailure(
                    spec.id,
                    output.reason,
                    model_id=generator.model_id,
                    revision=generator.revision,
                    license=generator.license,
                )
            else:
                fresh[spec.id] = cache.put(
                    _key(spec),
                    output.audio,
                    output.sample_rate,
                    model_id=output.model_id,
                    revision=output.revision,
                    license=output.license,
                )
    return [fresh.get(spec.id) or _cached(cache, spec) or _lost(spec) for spec in specs]


def share_render(storage: Storage, spec: TrackSpec, render: Render) -> None:
    """Publish a render for the build on another machine: the WAV first, under its sha256 (a
    machine killed between the two, and the batch rendered again on another GPU with other
    bytes, would meet it at the generation key), its sidecar last, under the generation key.
    Where another run of the batch handed its take over first, that take stands."""
    key = _key(spec)
    if is_shared(storage, spec):
        return
    storage.put_asset(
        render.path,
        storage.render_key(render.sha256, "wav"),
        sha256=render.sha256,
        content_type=content_type_for("wav"),
        metadata={"generation-key": key, "track-id": spec.id},
    )
    with tempfile.TemporaryDirectory() as folder:
        sidecar = Path(folder) / f"{key}.json"
        sidecar.write_text(sidecar_json(render))
        try:
            storage.put_asset(
                sidecar,
                storage.render_key(key, "json"),
                sha256=file_sha256(sidecar),
                content_type="application/json",
                metadata={"generation-key": key, "track-id": spec.id},
            )
        except StorageError:
            if not is_shared(storage, spec):  # not another run's sidecar landing first
                raise


def is_shared(storage: Storage, spec: TrackSpec) -> bool:
    """True when a render of this spec is already published for other machines."""
    return storage.read(storage.render_key(_key(spec), "json")) is not None


def fetch_shared(storage: Storage, cache: RenderCache, spec: TrackSpec) -> Render | None:
    """Bring a render published by a render-pool machine into the local cache (verified)."""
    key = _key(spec)
    local = _cached(cache, spec)
    if local is not None:
        return local
    sidecar = storage.read(storage.render_key(key, "json"))
    if sidecar is None:
        return None
    try:
        render = _render_of(sidecar, key, cache.wav_path(key))
    except ValueError as exc:
        raise StorageError(
            f"{storage.render_key(key, 'json')}, handed over for this track, is {exc}",
            transient=False,
        ) from None
    # Fetched and verified, not asked for first: S3 cannot prove a multipart object's sha256
    # (a render over 8 MiB) without the journal record that only a soundtrack's files have.
    try:
        storage.fetch(storage.render_key(render.sha256, "wav"), render.path, sha256=render.sha256)
    except StorageError as exc:
        try:  # handed over before WAVs were keyed by content
            storage.fetch(storage.render_key(key, "wav"), render.path, sha256=render.sha256)
        except StorageError:
            raise exc from None
    cache.adopt(render)
    return render


def fetch_handed_back(
    storage: Storage, cache: RenderCache, specs: Sequence[TrackSpec], missing: str
) -> list[Render | RenderFailure]:
    """Each track's render a render-pool machine handed back, or why not: `missing` where it
    handed back none, what is wrong where its hand-over cannot be used (that track's alone)."""
    results: list[Render | RenderFailure] = []
    for spec in specs:
        try:
            render = fetch_shared(storage, cache, spec)
        except SoundtrackError as exc:
            reason = f"fetching its render failed: {exc}"
            if not (isinstance(exc, StorageError) and exc.transient):
                # Its sidecar says it was handed over: the pool renders it no more until then.
                sidecar = storage.render_key(_key(spec), "json")
                reason += f"; remove {sidecar} (and the WAV it names) to render it again"
            results.append(RenderFailure(spec.id, reason))
            continue
        results.append(render or RenderFailure(spec.id, missing))
        if render:
            events.emit(spec.id, "generated")
    return results


def share_parent(storage: Storage, cache: RenderCache, parent: ParentAudio) -> None:
    """Hand a variation's parent audio (in the cache) to a render-pool machine: beside the
    renders, under its sha256 (the published key may not be committed until the lock is)."""
    storage.put_asset(
        cache.parent_path(parent),
        shared_parent_key(storage, parent),
        sha256=parent.sha256,
        content_type=content_type_for(parent.ext),
        metadata={"track-id": parent.track_id},
    )


def fetch_parent(storage: Storage, cache: RenderCache, parent: ParentAudio, key: str) -> None:
    """Bring a variation's parent audio into the cache from `key`, verified, unless it is
    there already: the published key for the build, the handed-over one on a pool machine."""
    path = cache.parent_path(parent)
    if path.is_file() and file_sha256(path) == parent.sha256:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.fetch(key, path, sha256=parent.sha256)


def shared_parent_key(storage: Storage, parent: ParentAudio) -> str:
    """Where `share_parent` hands a parent's file to render-pool machines."""
    return storage.render_key(parent.sha256, parent.ext)


def _key(spec: TrackSpec) -> str:
    if spec.generation_key is None:
        raise ValueError(f"track {spec.id!r} is a recording; it has nothing to render")
    return spec.generation_key


def _cached(cache: RenderCache, spec: TrackSpec) -> Render | None:
    return cache.get(_key(spec))


def _lost(spec: TrackSpec) -> RenderFailure:
    return RenderFailure(spec.id, "its render vanished from the cache during the build")


def _request(spec: TrackSpec, cache: RenderCache) -> GenerationRequest:
    from soundtrack.models import GenerationRequest

    if spec.prompt is None:
        raise ValueError(f"track {spec.id!r} has no prompt")
    source_audio, source_rate = None, None
    if spec.parent_audio is not None:
        path = cache.parent_path(spec.parent_audio)
        if not path.is_file():
            raise ValueError(f"track {spec.id!r}: its parent's audio was not fetched ({path})")
        source_audio, source_rate = read_audio(path)
    return GenerationRequest(
        track_id=spec.id,
        prompt=spec.prompt,
        duration_s=spec.render_duration_s,
        seed=spec.seed,
        sampling=spec.sampling,
        overlap_s=spec.overlap_s,
        bpm=spec.bpm,
        key=spec.key,
        time_signature=spec.time_signature,
        lyrics=spec.lyrics,
        negative_prompt=spec.negative_prompt,
        ace_step=spec.ace_step_sampling,
        stable_audio=spec.stable_audio_sampling,
        plain_prompt=spec.plain_prompt,
        source_audio=source_audio,
        source_rate=source_rate,
    )
